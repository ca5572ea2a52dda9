import pytest

from coati_tui.core import presets
from coati_tui.core.presets import PresetError

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)

SHIPPED = {"lora_naive", "qlora_naive", "gemini_offload", "gemini_offload_all", "zero2", "zero2_cpu"}


def test_shipped_presets_load_and_say_how_to_run_them():
    loaded = presets.load_all()
    assert set(loaded) >= SHIPPED
    for name in SHIPPED:
        p = loaded[name]
        text = open(p.path, encoding="utf-8").read()
        assert f"coati-tui train sft --model MODEL --data DATA --preset {name}" in text  # the headless command
        assert p.description
    assert loaded["qlora_naive"].quant.bits == 4 and loaded["qlora_naive"].lora.rank > 0
    assert loaded["gemini_offload"].strategy == "gemini" and loaded["gemini_offload"].full_finetune
    assert loaded["zero2_cpu"].needs.colossalai and loaded["zero2_cpu"].needs.cuda
    assert loaded["zero2"].strategy == "zero2" and loaded["zero2"].full_finetune and loaded["zero2"].needs.cuda
    assert not loaded["lora_naive"].needs.cuda


def test_every_knob_has_help():
    helps = presets.field_help()
    assert "train.grad_checkpointing" in helps and all(helps.values())


def _write(tmp_path, text, name="broken"):
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text, key, words",
    [
        ('strategy = "naive"\n[train]\nbatch_sise = 4\n', "train.batch_sise", "unknown key"),
        ('strategy = "deepspeed"\n', "strategy", "not one of"),
        ('[train]\nbatch_size = "four"\n', "train.batch_size", "expected int"),
        ("[train]\nbatch_size = 0\n", "train.batch_size", "below the minimum"),
        ("[lora]\ntargets = [1, 2]\n", "lora.targets", "list of strings"),
        ("train = 3\n", "train", "expected a table"),
        ('strategy = "gemini"\n[lora]\nrank = 16\n', "lora.rank", "does not support LoRA"),
        (
            'strategy = "gemini"\n[lora]\nrank = 0\n[offload]\nplacement = "auto"\n[train]\naccumulation_steps = 4\n',
            "train.accumulation_steps",
            "auto placement",
        ),
        ('strategy = "zero2_cpu"\n[lora]\nrank = 0\n[quant]\nbits = 4\n', "quant.bits", "naive strategy"),
        ("[offload]\noptim_frac = 0.5\n", "offload", "gemini"),
    ],
)
def test_broken_preset_names_file_and_key(tmp_path, text, key, words):
    path = _write(tmp_path, text)
    with pytest.raises(PresetError) as info:
        presets.load_file(path)
    assert info.value.file == str(path)
    assert info.value.key == key
    assert str(path) in str(info.value) and key in str(info.value) and words in str(info.value)


def test_invalid_toml_names_the_file(tmp_path):
    path = _write(tmp_path, "strategy = \n")
    with pytest.raises(PresetError, match="not valid TOML") as info:
        presets.load_file(path)
    assert str(path) in str(info.value)


def test_user_preset_is_added_and_overrides(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    _write(user, 'description = "mine"\n[lora]\nrank = 4\n', name="lora_naive")
    _write(user, '# 中文注释：小显存\ndescription = "小批量 LoRA"\n[train]\nbatch_size = 1\n', name="lora_small")
    loaded = presets.load_all(user)
    assert loaded["lora_naive"].lora.rank == 4 and loaded["lora_naive"].description == "mine"
    assert loaded["lora_small"].train.batch_size == 1 and loaded["lora_small"].description == "小批量 LoRA"
    assert presets.load("lora_small", user).name == "lora_small"


def test_overrides_are_validated():
    p = presets.load("lora_naive")
    q = p.with_overrides({"train.batch_size": 2, "lora.rank": 8})
    assert (q.train.batch_size, q.lora.rank) == (2, 8)
    assert (p.train.batch_size, p.lora.rank) == (4, 16)  # the original is untouched
    with pytest.raises(PresetError, match="no such setting"):
        p.with_overrides({"train.nope": 1})
    with pytest.raises(PresetError, match="no such setting"):
        p.with_overrides({"nosection.batch_size": 1})
    with pytest.raises(PresetError, match="train.batch_size"):
        p.with_overrides({"train.batch_size": -1})
    with pytest.raises(PresetError, match="no such preset"):
        presets.load("nonexistent")
