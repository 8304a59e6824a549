"""Accelerator choice on fixture /sys/module trees: only hardware KVM counts."""

from pathlib import Path

import pytest

from undebug.errors import EnvironmentMissing
from undebug.vm.accel import choose_accel


def host(tmp_path: Path, modules: list[str], dev_kvm: bool = True) -> Path:
    """A fake root with /sys/module/<m> dirs and /dev/kvm: fixture data, since the real
    host has exactly one of these configurations."""
    for module in modules:
        (tmp_path / "sys" / "module" / module).mkdir(parents=True)
    if dev_kvm:
        (tmp_path / "dev").mkdir()
        (tmp_path / "dev" / "kvm").write_bytes(b"")
    return tmp_path


def test_emulating_kvm_pvm_is_not_kvm(tmp_path: Path) -> None:
    accel = choose_accel("auto", host(tmp_path, ["kvm", "kvm_pvm"]))
    assert accel.name == "tcg"
    assert "kvm_pvm" in accel.reason


@pytest.mark.parametrize("module", ["kvm_intel", "kvm_amd"])
def test_hardware_kvm_is_chosen(tmp_path: Path, module: str) -> None:
    accel = choose_accel("auto", host(tmp_path, ["kvm", module]))
    assert accel.name == "kvm"
    assert accel.qemu_args == ["-accel", "kvm", "-cpu", "host"]


def test_no_dev_kvm_means_tcg(tmp_path: Path) -> None:
    assert choose_accel("auto", host(tmp_path, ["kvm", "kvm_intel"], dev_kvm=False)).name == "tcg"


def test_kvm_requested_but_unusable_is_an_environment_error(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentMissing) as info:
        choose_accel("kvm", host(tmp_path, ["kvm", "kvm_pvm"]))
    assert info.value.exit_code == 3


def test_tcg_requested_is_tcg_even_with_kvm(tmp_path: Path) -> None:
    assert choose_accel("tcg", host(tmp_path, ["kvm", "kvm_intel"])).name == "tcg"


def test_this_machine_picks_tcg() -> None:
    """These machines have /dev/kvm from kvm_pvm: auto must not pick it."""
    if not Path("/sys/module/kvm_pvm").is_dir():
        pytest.skip("not a kvm_pvm host")
    assert choose_accel("auto").name == "tcg"
