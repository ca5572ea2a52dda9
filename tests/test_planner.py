import pytest
from arch_configs import ARCHS

from coati_tui.core import planner, presets
from coati_tui.core.hardware import CPU, GPU, Profile
from coati_tui.core.modelinfo import Arch

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)

GIB = 1024**3
LLAMA7B = Arch.from_config(ARCHS["llama2-7b"][0])


def _plan(gpu_gib, cpu_gib, arch=LLAMA7B, **kw):
    machine = planner.Machine.described_as(int(gpu_gib * GIB), int(cpu_gib * GIB))
    return planner.plan(arch, presets.load_all(), machine, **kw)


def _row(result, preset, stage):
    return next(r for r in result.rows if r.preset == preset and r.stage == stage)


def test_7b_on_12gib_64gib():
    result = _plan(12, 64)
    # bf16 weights alone are 12.6 GiB: no bf16-weights preset fits a 12 GiB card
    for name in ("lora_naive", "gemini_offload", "zero2_cpu"):
        row = _row(result, name, "sft")
        assert row.status == "does_not_fit" and not row.fits
        assert "card has 12.0 GiB" in row.reason
    assert "weights 12.6 GiB" in _row(result, "lora_naive", "sft").reason
    # weights and optimizer in RAM: 16 B/param of 6.7B params is over 64 GiB
    row = _row(result, "gemini_offload_all", "sft")
    assert row.status == "does_not_fit" and "CPU RAM" in row.reason and "machine has 64.0 GiB" in row.reason
    for stage in planner.STAGES:
        assert _row(result, "qlora_naive", stage).fits
    assert result.recommended == "qlora_naive"
    assert result.recommended_by_stage == {"sft": "qlora_naive", "rm": "qlora_naive", "ppo": "qlora_naive"}


def test_7b_on_24gib_128gib():
    result = _plan(24, 128)
    for stage in planner.STAGES:
        assert _row(result, "lora_naive", stage).fits
    assert _row(result, "gemini_offload", "sft").fits  # bf16 weights on the GPU, optimizer in RAM
    assert not _row(result, "zero2_cpu", "sft").fits  # bf16 weights + bf16 gradients = 25 GiB
    assert not _row(result, "gemini_offload", "ppo").fits  # actor + critic weights alone
    assert result.recommended == "lora_naive"  # the fastest that fits every stage


def test_breakdown_sums_and_lora_is_16_bytes_per_trainable_param():
    row = _row(_plan(24, 128), "lora_naive", "sft")
    assert sum(row.gpu.values()) == row.gpu_bytes and sum(row.cpu.values()) == row.cpu_bytes
    trainable = LLAMA7B.lora_params(16, "all-linear")
    assert row.gpu["lora"] + row.gpu["gradients"] + row.gpu["optimizer"] == 16 * trainable
    assert row.gpu["weights"] == 2 * LLAMA7B.param_count()


def test_qlora_weights_are_about_a_quarter():
    result = _plan(24, 128)
    full, q = _row(result, "lora_naive", "sft").gpu["weights"], _row(result, "qlora_naive", "sft").gpu["weights"]
    assert 0.25 < q / full < 0.35


def test_a_quantized_model_on_a_cpu_keeps_its_linears_checkpoint_bytes_resident():
    """The safetensors pages read to quantize stay in RSS (the unquantized weights are views of the same
    mapping): as many bytes as the linears hold in the checkpoint's dtype, on a CPU only."""
    fp32 = Arch.from_config({**ARCHS["llama2-7b"][0], "torch_dtype": "float32"})
    assert (LLAMA7B.stored_bytes, fp32.stored_bytes) == (2, 4)  # 7B's config says float16
    q = presets.load("qlora_naive")
    for arch in (LLAMA7B, fp32):
        _, host, _, _ = planner.estimate(arch, q, "sft", 4, 256, "cpu")
        assert host["quantized_source"] == arch.linear_params_total * arch.stored_bytes
        _, on_gpu, _, _ = planner.estimate(arch, q, "sft", 4, 256, "cuda")
        assert "quantized_source" not in on_gpu
    _, plain, _, _ = planner.estimate(LLAMA7B, presets.load("lora_naive"), "sft", 4, 256, "cpu")
    assert "quantized_source" not in plain


def test_more_batch_more_memory_and_checkpointing_saves():
    small = _row(_plan(24, 128, batch_size=1), "lora_naive", "sft")
    big = _row(_plan(24, 128, batch_size=8), "lora_naive", "sft")
    assert big.gpu["activations"] > 4 * small.gpu["activations"]
    assert small.alternatives["activations_without_gc"] > 3 * small.gpu["activations"]


def test_ppo_memory_lean_mode_beats_four_models():
    row = _row(_plan(24, 128), "lora_naive", "ppo")
    assert row.gpu["weights"] < 0.5 * row.alternatives["four_separate_models"]


def test_gemini_accumulation_keeps_gradients_in_ram_and_ppo_parks_frozen_models():
    """Gemini accumulating over micro-batches keeps bf16 gradients beside the offloaded optimizer
    (2 B/param); PPO steps once per backward, so it has none, and its reference and reward model are
    counted in CPU RAM (they visit the GPU one at a time)."""
    result = _plan(24, 128)
    sft, ppo = _row(result, "gemini_offload", "sft"), _row(result, "gemini_offload", "ppo")
    assert sft.cpu["gradients_accumulated"] == 2 * LLAMA7B.param_count("lm")
    assert "gradients_accumulated" not in sft.gpu  # the optimizer (and so the gradients) are all in RAM
    assert not any("gradients_accumulated" in k for k in {**ppo.cpu, **ppo.gpu})
    assert ppo.cpu["reference"] > 0 and ppo.cpu["reward_model"] > 0


def test_stage_filter_and_seq_len_override():
    result = _plan(24, 128, stages=("rm",), seq_len=128)
    assert {r.stage for r in result.rows} == {"rm"} and {r.seq_len for r in result.rows} == {128}


def _this_machine(gpus, stacks):
    prof = Profile(
        gpus=gpus,
        cpu=CPU(64 * GIB, 60 * GIB, 8, 16),
        disk_free_bytes=10**12,
        disk_path="/",
        stacks=stacks,
        nvml_error=None if gpus else "NVML Shared Library Not Found",
    )
    return planner.Machine.from_profile(prof)


CPU_STACKS = {
    "torch": {"installed": True, "version": "2.13.0+cpu", "cuda_build": False},
    "transformers": {"installed": True, "version": "5.2.0"},
    "bitsandbytes": {"installed": True, "version": "0.48.0"},
    "colossalai": {"installed": False, "version": None},
}


def test_no_gpu_marks_cuda_presets_unavailable_with_fix():
    result = planner.plan(Arch.from_config(ARCHS["qwen2.5-0.5b"][0]), presets.load_all(), _this_machine([], CPU_STACKS))
    row = _row(result, "gemini_offload", "sft")
    assert row.status == "unavailable" and "NVIDIA GPU" in row.reason and row.fix
    lora = _row(result, "lora_naive", "sft")
    assert lora.device == "cpu" and lora.gpu_bytes == 0 and lora.precision == "fp32" and lora.fits
    assert result.recommended == "lora_naive"


def test_missing_colossalai_and_old_transformers_say_how_to_fix():
    gpu = GPU(0, "NVIDIA GeForce RTX 3060", 12 * GIB, 11 * GIB, "8.6", True, "550.54")
    stacks = {**CPU_STACKS, "torch": {"installed": True, "version": "2.5.1", "cuda_build": True}}
    result = planner.plan(Arch.from_config(ARCHS["qwen2.5-0.5b"][0]), presets.load_all(), _this_machine([gpu], stacks))
    row = _row(result, "zero2_cpu", "sft")
    assert row.status == "unavailable" and "pip install 'coati-tui[colossalai]'" in row.fix
    assert _row(result, "lora_naive", "sft").fits and _row(result, "lora_naive", "sft").device == "cuda"

    old = {**CPU_STACKS, "transformers": {"installed": True, "version": "4.51.3"}}
    result = planner.plan(Arch.from_config(ARCHS["qwen2.5-0.5b"][0]), presets.load_all(), _this_machine([], old))
    row = _row(result, "qlora_naive", "sft")
    assert row.status == "unavailable" and "4.51.3" in row.reason


def test_cpu_build_torch_on_a_gpu_machine_is_reported():
    gpu = GPU(0, "NVIDIA GeForce RTX 4090", 24 * GIB, 23 * GIB, "8.9", True, "550.54")
    result = planner.plan(LLAMA7B, presets.load_all(), _this_machine([gpu], CPU_STACKS))
    row = _row(result, "lora_naive", "sft")
    assert row.status == "unavailable" and "CPU build" in row.reason


def test_fp16_on_cards_without_bf16():
    gpu = GPU(0, "Tesla T4", 16 * GIB, 15 * GIB, "7.5", False, "535")
    stacks = {**CPU_STACKS, "torch": {"installed": True, "version": "2.5.1", "cuda_build": True}}
    result = planner.plan(Arch.from_config(ARCHS["qwen2.5-0.5b"][0]), presets.load_all(), _this_machine([gpu], stacks))
    assert _row(result, "lora_naive", "sft").precision == "fp16"


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="unknown stage"):
        _plan(24, 128, stages=("nope",))


@pytest.mark.parametrize("lean", [True, False])
def test_ppo_layout_is_decided_once_for_planner_and_trainer(lean):
    """``ppo.memory_lean = false`` plans as four models (it used to plan as one base and train as four)."""
    preset = presets.load("lora_naive").with_overrides({"ppo.memory_lean": lean})
    assert preset.ppo_lean is lean  # what trainer/ppo/recipe.py picks its layout by
    gpu, _, alternatives, _ = planner.estimate(LLAMA7B, preset, "ppo", 4, 512, "cuda")
    assert ("reward_adapter" in gpu) is lean
    assert ("four_separate_models" in alternatives) is lean
    assert ({"actor_weights", "critic_weights", "reference", "reward_model"} <= set(gpu)) is not lean


def test_zero2_keeps_20_bytes_a_parameter_on_the_card_and_nothing_in_ram():
    arch = Arch.from_config(ARCHS["qwen2.5-0.5b"][0])
    row = _row(_plan(24, 64, arch=arch), "zero2", "sft")
    params = arch.param_count("lm")
    # bf16 weights, bf16 gradients, fp32 master weights, Adam m and v, fp32 gradients for the step
    state = {k: row.gpu[k] for k in ("weights", "gradients", "master_weights", "optimizer", "gradients_fp32")}
    assert sum(state.values()) == 20 * params
    assert row.fits and not any(k.endswith("offloaded") for k in row.cpu)
    assert not _row(_plan(24, 128), "zero2", "sft").fits  # a 7B's 148 GiB of state
    assert _row(_plan(24, 128), "zero2_cpu", "sft").gpu_bytes < _row(_plan(24, 128), "zero2", "sft").gpu_bytes
