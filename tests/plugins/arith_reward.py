"""Plug-in rewards for tests, written as a user would (`[task] reward = "arith_reward:..."`
with this folder on PYTHONPATH). Not part of the scca package.

  exact_final   1 when the number after the last '#' equals the result (meta "answer"),
                with the parsed text as a detail;
  brevity       1 - characters / BREVITY_CHARS, at least 0: a dense reward the policy can
                follow in a few steps (it learns to end its answers sooner);
  broken, out_of_range, length_bonus, NOT_CALLABLE: the fault cases of the unit tests.
"""

BREVITY_CHARS = 40
NOT_CALLABLE = 3


def exact_final(prompt: str, completion: str, meta: dict) -> dict:
    tail = completion.rsplit("#", 1)[-1].strip()
    ok = tail.lstrip("-").isdigit() and int(tail) == int(meta["answer"])
    return {"reward": 1.0 if ok else 0.0, "parsed": tail[:20]}


def brevity(prompt: str, completion: str, meta: dict) -> float:
    return max(0.0, 1.0 - len(completion) / BREVITY_CHARS)


def broken(prompt: str, completion: str, meta: dict) -> float:
    raise ZeroDivisionError("user bug")


def out_of_range(prompt: str, completion: str, meta: dict) -> float:
    return 2.5


def length_bonus(prompt: str, completion: str, meta: dict) -> float:
    return min(1.0, len(completion) / 10)
