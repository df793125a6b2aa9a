"""The engine warns when a bf16 precision would run emulated on the CPU (no AVX512-BF16 / AMX)."""
import warnings

import pytest

from fxprune.calibration import engine as eng


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_hardware_bf16_warns(monkeypatch, native):
    monkeypatch.setattr(eng, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        eng.Engine(eng.EngineConfig(precision="bf16-mixed"))
        eng.Engine(eng.EngineConfig(precision="32-true"))
    ours = [w for w in seen if issubclass(w.category, RuntimeWarning) and "AVX512-BF16" in str(w.message)]
    assert len(ours) == (0 if native else 1)
    if ours:
        assert "'bf16-mixed'" in str(ours[0].message)


def test_native_bf16_probe_answers_a_bool():
    assert isinstance(eng.cpu_has_native_bf16(), bool)
