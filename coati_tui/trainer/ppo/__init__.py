"""PPO with the PTX loss (``recipe.py``), its two model layouts, rollout, update and math."""
