"""safefiles' one test of "a private folder of ours" (fstat on the opened folder), used by the
status file's $XDG_RUNTIME_DIR and by TheSchwartz's listening turns alike."""

from __future__ import annotations

import os
import stat

import pytest

from workermanager import safefiles
from workermanager.daemon.statusfile import private_runtime_folder


def test_the_runtime_folder_is_used_only_when_it_is_ours_alone(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    assert private_runtime_folder() == str(folder)
    folder.chmod(0o750)  # others may enter
    assert private_runtime_folder() is None
    folder.chmod(0o700)
    if os.geteuid() == 0:  # someone else's
        os.chown(folder, 65534, -1)
        assert private_runtime_folder() is None
        os.chown(folder, 0, -1)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "file"))
    assert private_runtime_folder() is None
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/run")
    assert private_runtime_folder() is None


def test_a_private_folder_is_made_0700_and_a_planted_one_is_refused(tmp_path):
    fd = safefiles.open_private_folder(str(tmp_path), "mine", "testing")
    os.close(fd)
    assert stat.S_IMODE(os.stat(tmp_path / "mine").st_mode) == 0o700
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(safefiles.UnsafePath, match=r"open: not a private folder of ours .*mode 0777"):
        safefiles.open_private_folder(str(tmp_path), "open", "testing")
    os.symlink(tmp_path / "mine", tmp_path / "link")
    with pytest.raises(safefiles.UnsafePath, match="link: not usable for testing: a symbolic link"):
        safefiles.open_private_folder(str(tmp_path), "link", "testing")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: root's link, the account's folder")
def test_a_hard_link_to_roots_symbolic_link_in_the_accounts_folder_is_not_followed(tmp_path):
    """Where fs.protected_hardlinks is off, the account can give any root-owned symbolic link
    (/lib -> usr/lib) a second name in its own folder: still root's, but root did not put it there."""
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    roots_link = tmp_path / "roots-link"
    roots_link.symlink_to(secret)
    account = tmp_path / "account"
    account.mkdir()
    os.chown(account, 65534, 65534)
    os.link(roots_link, account / "logs", follow_symlinks=False)  # root makes it, for the systems that stop the account
    with pytest.raises(safefiles.UnsafePath, match=r"account/logs is a symbolic link with 2 names"):
        os.close(safefiles.open_folder(str(account / "logs")))
    os.close(safefiles.open_folder(str(roots_link)))  # root's link with one name, in root's folder: followed
