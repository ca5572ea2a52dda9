"""coati-tui: ColossalChat's RLHF loop (SFT -> reward model -> PPO) on one consumer GPU, from a terminal."""

__version__ = "0.1.0"
