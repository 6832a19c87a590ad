"""learner/credit/contexts.py: never self-conditioned, bank fallback, bounds, wrong-sibling contexts."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from learner.credit.contexts import SolutionBank, pick_contexts, pick_wrong_contexts

group = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from([0.0, 1.0])),
                 min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(group=group, banked=st.lists(st.sampled_from(["a", "b", "c", "x"]), max_size=4), seed=st.integers(0, 99))
def test_never_self_conditioned(group, banked, seed):
    texts, rewards = [t for t, _ in group], [r for _, r in group]
    bank = SolutionBank()
    for t in banked:
        bank.add("p", t)
    for t, r in zip(texts, rewards):  # the caller may bank this step's correct answers first
        if r == 1.0:
            bank.add("p", t)
    ctx = pick_contexts(texts, rewards, "p", bank, random.Random(seed))
    wrong = pick_wrong_contexts(texts, rewards, random.Random(seed))
    varied = len(set(rewards)) > 1
    for i, (c, w) in enumerate(zip(ctx, wrong)):
        if not varied:
            assert c is None and w is None
            continue
        if c is not None:
            assert c != texts[i]  # never i's own text (hence never i itself)
            correct_sibs = {texts[j] for j in range(len(texts)) if j != i and rewards[j] == 1.0}
            assert c in correct_sibs or c in bank.solutions("p")
            if correct_sibs - {texts[i]}:
                assert c in correct_sibs  # a sibling is preferred over the bank
        else:
            others = {texts[j] for j in range(len(texts)) if j != i and rewards[j] == 1.0} | set(bank.solutions("p"))
            assert others <= {texts[i]}  # None only when nothing else exists
        if w is not None:
            assert w != texts[i] and w in {texts[j] for j in range(len(texts)) if j != i and rewards[j] == 0.0}


@settings(max_examples=200, deadline=None)
@given(rewards=st.lists(st.sampled_from([0.0, 1.0]), min_size=2, max_size=8), seed=st.integers(0, 99))
def test_distinct_texts_never_pick_own_index(rewards, seed):
    texts = [f"sol{i}" for i in range(len(rewards))]
    ctx = pick_contexts(texts, rewards, "p", SolutionBank(), random.Random(seed), allow_identical=True)
    for i, c in enumerate(ctx):
        if c is not None:
            j = texts.index(c)
            assert j != i and rewards[j] == 1.0


def test_bank_fallback_and_empty_bank():
    texts, rewards = ["12;#3", "12;#4", "11;#4"], [1.0, 0.0, 0.0]
    rng = random.Random(0)
    # the only correct sample, empty bank -> None; the wrong ones get the correct sibling
    assert pick_contexts(texts, rewards, "p", SolutionBank(), rng) == [None, "12;#3", "12;#3"]
    bank = SolutionBank()
    bank.add("p", "old;#3")
    bank.add("q", "other prompt")
    bank.add("p", "12;#3")  # the sample itself, already banked: skipped
    assert pick_contexts(texts, rewards, "p", bank, rng) == ["old;#3", "12;#3", "12;#3"]
    bank.add("p", "new;#3")
    assert pick_contexts(texts, rewards, "p", bank, rng)[0] == "new;#3"  # newest first
    # no variance: nobody gets a context
    assert pick_contexts(["a", "b"], [1.0, 1.0], "p", bank, rng) == [None, None]
    assert pick_contexts(["a", "b"], [0.0, 0.0], "p", bank, rng) == [None, None]
    # identical correct siblings are not used by default (self-conditioning in all but index)
    assert pick_contexts(["s", "s", "w"], [1.0, 1.0, 0.0], "r", SolutionBank(), rng) == [None, None, "s"]
    assert pick_contexts(["s", "s", "w"], [1.0, 1.0, 0.0], "r", SolutionBank(), rng,
                         allow_identical=True) == ["s", "s", "s"]
    # wrong siblings for sc_contrast
    assert pick_wrong_contexts(texts, rewards, rng) in (["12;#4", "11;#4", "12;#4"], ["11;#4", "11;#4", "12;#4"])


def test_bank_bounds_order_and_state():
    bank = SolutionBank(max_per_prompt=2, max_total=3)
    for pid, t in [("a", "1"), ("a", "2"), ("a", "3"), ("b", "x"), ("a", "2"), ("c", "y")]:
        bank.add(pid, t)
    # a: "1" evicted per prompt; re-adding "2" made it newest; "c" pushed out the globally oldest ("a","3")
    assert bank.solutions("a") == ["2"] and bank.solutions("b") == ["x"] and bank.solutions("c") == ["y"]
    assert len(bank) == 3 and bank.newest("a", exclude="2") is None and bank.newest("zz") is None
    back = SolutionBank.from_dict(json.loads(json.dumps(bank.to_dict())))
    assert back.solutions("a") == ["2"] and back.to_dict() == bank.to_dict()
