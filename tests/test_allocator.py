"""The CLI's allocator setting: taken by glibc, skipped on request."""

import ctypes.util
import platform

import pytest

from mmkgrec.allocator import retain_freed_memory

glibc = platform.libc_ver()[0] == "glibc" and ctypes.util.find_library("c") is not None


@pytest.mark.skipif(not glibc, reason="mallopt is glibc's; elsewhere the setting is a no-op")
def test_glibc_takes_the_setting(monkeypatch):
    monkeypatch.delenv("MMKGREC_MALLOC", raising=False)
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True  # idempotent


def test_system_keeps_the_defaults(monkeypatch):
    monkeypatch.setenv("MMKGREC_MALLOC", "system")
    assert retain_freed_memory() is False


def test_the_cli_sets_it(monkeypatch):
    from mmkgrec import cli

    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(1))
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert calls == [1]
