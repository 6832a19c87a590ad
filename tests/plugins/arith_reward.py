"""A plug-in reward for tests: the `arith` answer checked by the user's own code.

`[task] reward = "arith_reward:exact_final"` with this folder on PYTHONPATH. Scores 1 when
the number after the last '#' of the completion equals the problem's result (meta
"answer"), with the parsed value as a detail; 0 otherwise. Not part of the scca package.
"""


def exact_final(prompt: str, completion: str, meta: dict) -> dict:
    tail = completion.rsplit("#", 1)[-1].strip()
    ok = tail.lstrip("-").isdigit() and int(tail) == int(meta["answer"])
    return {"reward": 1.0 if ok else 0.0, "parsed": tail[:20]}


def broken(prompt: str, completion: str, meta: dict) -> float:
    raise ZeroDivisionError("user bug")


def out_of_range(prompt: str, completion: str, meta: dict) -> float:
    return 2.5


def length_bonus(prompt: str, completion: str, meta: dict) -> float:
    return min(1.0, len(completion) / 10)


NOT_CALLABLE = 3
