"""tests/conftest.py verifies every fleet manifest a test writes: a sub-run (pytester) with the
same conftest shows that it passes good manifests, fails a test that writes a tampered one, lets
a test marked ``forged_manifests`` write one (any, or under the names the marker gives), and
catches one a module fixture writes last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.manifest import build_signed, sign
from fleet.station_key import generate_signing_key, public_key_pem
from tests.manifest_fixtures import run_record

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.fixture
def subrun(pytester: pytest.Pytester) -> pytest.Pytester:
    key = generate_signing_key()
    good = sign(build_signed(run_record(), station_public_key_pem=public_key_pem(key)), key)
    tampered = json.loads(json.dumps(good))
    tampered["signed"]["devices"][0]["keys"][0]["sec_tag"] = 17
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    forged_manifests: writes forged manifests\n")
    pytester.makefile(".txt", good=json.dumps(good), tampered=json.dumps(tampered))
    return pytester


TESTS = '''
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent


def test_good(tmp_path):
    shutil.copy(DATA / "good.txt", tmp_path / "m.json")


def test_tampered(tmp_path):
    (tmp_path / "sub").mkdir()
    shutil.copy(DATA / "tampered.txt", tmp_path / "sub" / "bad.json")


@pytest.mark.forged_manifests
def test_tampered_on_purpose(tmp_path):
    shutil.copy(DATA / "tampered.txt", tmp_path / "bad.json")


@pytest.mark.forged_manifests("bad*.json")
def test_named_forgery(tmp_path):
    shutil.copy(DATA / "tampered.txt", tmp_path / "bad-1.json")
    shutil.copy(DATA / "good.txt", tmp_path / "real.json")


@pytest.mark.forged_manifests("bad*.json")
def test_forgery_under_another_name(tmp_path):
    shutil.copy(DATA / "tampered.txt", tmp_path / "real.json")


def test_not_a_manifest(tmp_path):
    (tmp_path / "doc.json").write_text('{"signed": {"format": "other"}, "signatures": []}')
'''


# The sub-runs' files are under this session's temporary directory too: these two write forged
# manifests on purpose.
@pytest.mark.forged_manifests
def test_a_test_writing_a_tampered_manifest_fails(subrun: pytest.Pytester) -> None:
    subrun.makepyfile(test_sub=TESTS)
    result = subrun.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6, errors=2)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_tampered*",
        "*3 check(s) failed on fleet manifest(s) written during this test*",
        "*test_tampered0/sub/bad.json: signature 1: ES256 signature by key * does NOT verify*",
        "*test_tampered0/sub/bad.json: device * key tls: sec_tag: the answer is for sec_tag "
        "16842753, the key says 17",
        "*ERROR at teardown of test_forgery_under_another_name*",
        "*test_forgery_under_another_nam*/real.json: device * key tls: sec_tag: *",
        "ERROR test_sub.py::test_tampered - Failed: *",
        "ERROR test_sub.py::test_forgery_under_another_name - Failed: *",
    ])


@pytest.mark.forged_manifests
def test_a_module_fixture_writing_a_tampered_manifest_fails_the_session(
        subrun: pytest.Pytester) -> None:
    subrun.makepyfile(test_sub='''
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shared")
    yield directory
    shutil.copy(Path(__file__).parent / "tampered.txt", directory / "late.json")


def test_uses_it(shared):
    pass
''')
    result = subrun.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*fleet manifests that do not verify*",
        "test_sub.py::test_uses_it (written after its teardown): shared0/late.json: *sec_tag*",
    ])
