from __future__ import annotations

from benchmarks.load import MIX, MixLoad


def _load(seed: int) -> MixLoad:
    pools = {
        "tatoeba": [f"Satz {i}." for i in range(50)],
        "multi30k": [f"Ein Hund {i} läuft." for i in range(50)],
        "news": [f"Die Regierung hat {i} Gesetze beschlossen." for i in range(50)],
    }
    return MixLoad("http://127.0.0.1:1", pools, MIX, seed)


def test_poisson_plan_is_the_same_for_every_server_given_the_same_load():
    a, b = _load(3), _load(3)
    b.rng.random()  # a server's answers draw from the shared rng: the plan must not depend on it
    plan = a.plan(20.0, 10.0)
    assert plan == b.plan(20.0, 10.0)
    assert 120 < len(plan) < 280  # ~200 arrivals at 20/s over 10 s
    assert all(0 < t < 10 for t, _, _ in plan) and [t for t, _, _ in plan] == sorted(t for t, _, _ in plan)
    kinds = {k for _, k, _ in plan}
    assert kinds == {k for k, w in MIX.items() if w > 0}
    paragraph = next(body for _, k, body in plan if k == "paragraph16")
    assert paragraph["q"].count(".") == 16


def test_poisson_plan_changes_with_seed_and_rate():
    assert _load(3).plan(20.0, 10.0) != _load(4).plan(20.0, 10.0)
    assert _load(3).plan(20.0, 10.0) != _load(3).plan(21.0, 10.0)
