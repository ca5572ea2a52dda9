import json

import pytest
from arch_configs import ARCHS

from coati_tui.core.modelinfo import Arch, ModelError, read_config, resolve_model

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_param_count_matches_published(name):
    cfg, published = ARCHS[name]
    assert Arch.from_config(cfg).param_count() == published


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_param_count_matches_meta_instantiation(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg, _ = ARCHS[name]
    arch = Arch.from_config(cfg)
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        lm = transformers.AutoModelForCausalLM.from_config(config)
        config.num_labels = 1
        rm = transformers.AutoModelForSequenceClassification.from_config(config)
    assert arch.param_count("lm") == sum(p.numel() for p in lm.parameters())
    assert arch.param_count("score") == sum(p.numel() for p in rm.parameters())
    # the quantizable part is exactly the decoder layers' Linear modules
    linear = sum(
        m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        for n, m in lm.named_modules()
        if isinstance(m, torch.nn.Linear) and "layers." in n
    )
    assert arch.linear_params_total == linear


def test_lora_params_match_peft():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg, _ = ARCHS["qwen2.5-0.5b"]
    small = {**cfg, "num_hidden_layers": 2}
    config = transformers.AutoConfig.for_model(**small)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
        model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules="all-linear"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert Arch.from_config(small).lora_params(8, "all-linear") == trainable
    assert Arch.from_config(small).lora_params(8, ["q_proj", "v_proj"]) == 2 * 8 * (896 + 896 + 896 + 128)


def test_unknown_family_is_counted_as_llama_and_flagged():
    cfg = {**ARCHS["llama2-7b"][0], "model_type": "someday_lm"}
    arch = Arch.from_config(cfg)
    assert not arch.exact
    assert arch.param_count() == ARCHS["llama2-7b"][1]


def test_missing_key_names_it():
    cfg = dict(ARCHS["llama2-7b"][0])
    del cfg["intermediate_size"]
    with pytest.raises(ModelError, match="intermediate_size"):
        Arch.from_config(cfg)


def test_resolve_folder_run_folder_adapter_and_hub_cache(tmp_path, monkeypatch):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(ARCHS["mistral-7b"][0]))
    assert resolve_model(model) == model

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model)}))
    assert resolve_model(run) == run / "final"
    assert read_config(run)["model_type"] == "mistral"  # an adapter plans as its base

    cache = tmp_path / "hub"
    snap = cache / "models--org--tiny-7b" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(ARCHS["qwen3-0.6b"][0]))
    (cache / "models--org--tiny-7b" / "refs").mkdir()
    (cache / "models--org--tiny-7b" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_model("org/tiny-7b") == snap
    assert read_config("org/tiny-7b")["model_type"] == "qwen3"


def test_missing_model_says_nothing_is_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="downloads nothing"):
        resolve_model("meta-llama/Llama-2-7b-hf")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(tmp_path / "empty_dir")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_config(bad)
