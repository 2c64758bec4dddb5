"""Shared fixtures: the demo tokenizer, the planted teacher and its twin model, short probes."""

from __future__ import annotations

import pytest

import hydrahead_lit as hh
from hydrahead_lit.data.demo import demo_tokenizer
from hydrahead_lit.selection import make_probes
from tests.selection.planted import DIGIT_IDS, planted_teacher


@pytest.fixture(scope="session")
def tok():
    t = demo_tokenizer()
    assert [t.convert_tokens_to_ids(str(d)) for d in range(10)] == DIGIT_IDS  # the planted circuit reads these
    return t


@pytest.fixture(scope="session")
def teacher():
    return planted_teacher()


@pytest.fixture(scope="session")
def twin(teacher):
    return hh.convert(teacher, None, twins=True).eval()


@pytest.fixture(scope="session")
def probes(tok):
    return make_probes(tok, ["passkey", "niah_single"], length=128, count=4, seed=0)
