"""The semantic answer cache: paraphrases hit, unrelated questions and other scopes miss, LRU bound, persistence."""

from __future__ import annotations

import multiprocessing
import sqlite3

import numpy as np
import pytest

from client.cache import CacheRefused, SemanticCache, conflict, scope_key

SCOPE = {"collection": "docs", "index_version": 3, "filters": {"lang": "en"}, "guard_policy": "p@1", "judge": "r@2"}
ANSWER = {"text": "Starbucks was founded in Seattle in 1971. [1]", "citations": [{"n": 1, "chunk_id": "c1"}]}


def unit(seed: int, dim: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, cos: float, seed: int) -> np.ndarray:
    """A unit vector at cosine ``cos`` from the unit vector ``v``."""
    r = unit(seed, len(v))
    r -= (r @ v) * v
    r /= np.linalg.norm(r)
    return (cos * v + np.sqrt(1 - cos**2) * r).astype(np.float32)


@pytest.fixture
def cache(tmp_path):
    with SemanticCache(tmp_path / "cache.sqlite", max_entries=100, threshold=0.92) as c:
        yield c


def test_paraphrase_hits_and_unrelated_misses_with_real_embeddings(tmp_path, embedder):
    pairs = [
        ("Where was Starbucks founded?", "In which city was Starbucks founded?"),
        ("How do I reset my password?", "How can I reset my password?"),
        ("What is the refund policy for annual plans?", "What's the refund policy for annual plans?"),
    ]
    unrelated = ["How tall is Mount Everest?", "Which enzyme digests starch in saliva?",
                 "What is the refund policy for monthly plans in Canada on weekends?"]
    with SemanticCache(tmp_path / "c.sqlite", max_entries=50, threshold=0.92) as c:
        for n, (q, _) in enumerate(pairs):
            c.put(embedder.embed_one(q), SCOPE, q, f"run-{n}", {"text": f"answer {n}"}, passed=True)
        for n, (q, para) in enumerate(pairs):
            hit = c.lookup(embedder.embed_one(para), SCOPE, question=para)
            assert hit is not None, para
            assert hit.question == q and hit.run_id == f"run-{n}" and hit.value == {"text": f"answer {n}"}
            assert 0.92 <= hit.similarity <= 1.0
        for q in unrelated:
            assert c.lookup(embedder.embed_one(q), SCOPE, question=q) is None, q
        s = c.stats()
        assert (s.hits, s.misses, s.entries) == (3, 3, 3)


def test_threshold_is_the_boundary(cache):
    v = unit(1)
    cache.put(v, SCOPE, "q", "r1", ANSWER, passed=True)
    assert cache.lookup(near(v, 0.95, 2), SCOPE) is not None
    assert cache.lookup(near(v, 0.90, 3), SCOPE) is None
    hit = cache.lookup(v * 7.0, SCOPE)  # not normalised by the caller: normalised here
    assert hit is not None and hit.similarity == pytest.approx(1.0, abs=1e-5)


def test_best_match_wins(cache):
    v = unit(1)
    cache.put(near(v, 0.94, 5), SCOPE, "far", "r-far", {"a": 1}, passed=True)
    cache.put(near(v, 0.99, 6), SCOPE, "close", "r-close", {"a": 2}, passed=True)
    assert cache.lookup(v, SCOPE).run_id == "r-close"


def test_scope_mismatch_misses(cache):
    v = unit(1)
    cache.put(v, SCOPE, "q", "r1", ANSWER, passed=True)
    for change in ({"index_version": 4}, {"filters": {"lang": "de"}}, {"guard_policy": "p@2"}, {"collection": "x"}):
        assert cache.lookup(v, {**SCOPE, **change}) is None, change
    assert cache.lookup(v, {k: SCOPE[k] for k in list(SCOPE)[:-1]}) is None  # a key less is another scope
    assert cache.lookup(v, dict(reversed(list(SCOPE.items())))) is not None  # key order does not matter


def test_scope_key_is_canonical():
    assert scope_key({"a": 1, "b": [1, 2]}) == scope_key({"b": [1, 2], "a": 1})
    assert scope_key({"a": 1}) != scope_key({"a": "1"})
    assert scope_key({"a": [1, 2]}) != scope_key({"a": [2, 1]})
    with pytest.raises(TypeError):
        scope_key({"a": object()})


def test_eviction_keeps_the_bound_and_evicts_least_recently_used(tmp_path):
    with SemanticCache(tmp_path / "c.sqlite", max_entries=5, threshold=0.99) as c:
        vecs = [unit(100 + i) for i in range(8)]
        for i in range(5):
            c.put(vecs[i], SCOPE, f"q{i}", f"r{i}", {"i": i}, passed=True)
        assert c.lookup(vecs[0], SCOPE).run_id == "r0"  # q0 is now the most recently used
        for i in range(5, 8):
            c.put(vecs[i], SCOPE, f"q{i}", f"r{i}", {"i": i}, passed=True)
            assert len(c) == 5
        # least recently used first: q1, q2, q3 went; q0 (hit) and q4 stayed
        assert [c.lookup(vecs[i], SCOPE) is not None for i in range(8)] == [True, False, False, False, True, True,
                                                                           True, True]
        assert c.stats().evictions == 3


def test_eviction_crosses_scopes(tmp_path):
    with SemanticCache(tmp_path / "c.sqlite", max_entries=2, threshold=0.99) as c:
        a, b, d = unit(1), unit(2), unit(3)
        c.put(a, {"s": 1}, "a", "ra", 1, passed=True)
        c.put(b, {"s": 2}, "b", "rb", 2, passed=True)
        assert c.lookup(a, {"s": 1}) is not None  # loads scope 1 into memory, refreshes a
        c.put(d, {"s": 2}, "d", "rd", 3, passed=True)  # evicts b
        assert c.lookup(b, {"s": 2}) is None and c.lookup(a, {"s": 1}) is not None
        assert len(c) == 2


def test_persistence_across_instances(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    v = unit(9)
    with SemanticCache(path, max_entries=10) as c:
        c.put(v, SCOPE, "Where was Starbucks founded?", "run-1", ANSWER, passed=True)
    with SemanticCache(path, max_entries=10) as c2:
        hit = c2.lookup(v, SCOPE)
        assert hit is not None and hit.value == ANSWER and hit.run_id == "run-1" and hit.hits == 1
        assert c2.lookup(v, SCOPE).hits == 2


def test_other_instance_sees_puts_and_invalidations(tmp_path):
    path = tmp_path / "c.sqlite"
    v, w = unit(1), unit(2)
    with SemanticCache(path, max_entries=10) as a, SemanticCache(path, max_entries=10) as b:
        a.put(v, SCOPE, "q1", "r1", 1, passed=True)
        assert b.lookup(v, SCOPE) is not None  # b loads the scope
        a.put(w, SCOPE, "q2", "r2", 2, passed=True)
        assert b.lookup(w, SCOPE) is not None  # b notices a's commit and reloads
        a.invalidate()
        assert b.lookup(v, SCOPE) is None and b.lookup(w, SCOPE) is None


def _put_many(path: str, start: int) -> None:
    with SemanticCache(path, max_entries=1000) as c:
        for i in range(start, start + 40):
            c.put(unit(i), SCOPE, f"q{i}", f"r{i}", {"i": i}, passed=True)


def test_concurrent_processes_share_the_db(tmp_path):
    path = str(tmp_path / "c.sqlite")
    SemanticCache(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_put_many, args=(path, s)) for s in (0, 1000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with SemanticCache(path, max_entries=1000) as c:
        assert len(c) == 80
        assert all(c.lookup(unit(i), SCOPE).value == {"i": i} for i in (0, 39, 1000, 1039))
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_put_refuses_failed_answers_and_bad_input(cache):
    v = unit(1)
    with pytest.raises(CacheRefused):
        cache.put(v, SCOPE, "q", "r", ANSWER, passed=False)
    with pytest.raises(CacheRefused):
        cache.put(v, SCOPE, "q", "r", {**ANSWER, "passed": False}, passed=True)
    with pytest.raises(CacheRefused):
        cache.put(np.zeros(384), SCOPE, "q", "r", ANSWER, passed=True)
    with pytest.raises(CacheRefused):
        cache.put(unit(1, 128), SCOPE, "q", "r", ANSWER, passed=True)
    with pytest.raises(CacheRefused):
        cache.put(v, SCOPE, "q", "r", {"x": object()}, passed=True)
    assert len(cache) == 0 and cache.lookup(v, SCOPE) is None


def test_same_question_is_replaced_not_duplicated(cache):
    v = unit(1)
    w = near(v, 0.97, 4)
    cache.put(v, SCOPE, "q", "r1", {"v": 1}, passed=True)
    cache.put(w, SCOPE, "q", "r2", {"v": 2}, passed=True)  # same text
    cache.put(w, SCOPE, "q (again)", "r3", {"v": 3}, passed=True)  # same vector
    assert len(cache) == 1 and cache.lookup(w, SCOPE).run_id == "r3"


def test_invalidate_by_scope_subset(cache):
    v = unit(1)
    s1 = {"collection": "docs", "index_version": 1}
    s2 = {"collection": "docs", "index_version": 2}
    s3 = {"collection": "wiki", "index_version": 1}
    for n, s in enumerate((s1, s2, s3)):
        cache.put(v, s, "q", f"r{n}", n, passed=True)
    assert cache.lookup(v, s1) is not None  # loaded in memory before the invalidation
    assert cache.invalidate({"collection": "docs", "index_version": 1}) == 1
    assert cache.lookup(v, s1) is None and cache.lookup(v, s2) is not None
    assert cache.invalidate({"collection": "docs"}) == 1
    assert cache.lookup(v, s2) is None and cache.lookup(v, s3) is not None
    assert cache.invalidate({"collection": "nope"}) == 0
    assert cache.invalidate() == 1 and len(cache) == 0


@pytest.mark.parametrize(("asked", "cached"), [
    ("When was Starbucks founded?", "Where was Starbucks founded?"),
    ("Does smoking decrease the risk of lung cancer?", "Does smoking increase the risk of lung cancer?"),
    ("Normal granulomas form in the absence of TNF.", "Normal granulomas form in the presence of TNF."),
    ("Is the API free for students?", "Is the API not free for students?"),
    ("Who approves expense reports over 500 dollars?", "Who approves expense reports over 5000 dollars?"),
    ("What is the maximum password length?", "What is the minimum password length?"),
    ("What are the opening hours on Sunday?", "What are the opening hours on Saturday?"),
    ("What is the refund policy for monthly plans?", "What is the refund policy for annual plans?"),
    ("What is the default port of MySQL?", "What is the default port of PostgreSQL?"),
])
def test_conflicting_questions(asked, cached):
    assert conflict(asked, cached)


@pytest.mark.parametrize(("asked", "cached"), [
    ("In which city was Starbucks founded?", "Where was Starbucks founded?"),
    ("Does smoking raise the risk of lung cancer?", "Does smoking increase the risk of lung cancer?"),
    ("What's the refund policy on yearly plans?", "What is the refund policy for annual plans?"),
    ("What is Canada's population?", "What is the population of Canada?"),
    ("What is the largest file size I can upload?", "What is the maximum file size for uploads?"),
    ("What date does the spring semester begin?", "When does the spring semester start?"),
])
def test_paraphrases_do_not_conflict(asked, cached):
    assert conflict(asked, cached) is None


def test_guard_skips_a_conflicting_candidate_and_serves_the_next(cache):
    v = unit(1)
    cache.put(near(v, 0.99, 2), SCOPE, "Where was Starbucks founded?", "r-where", {"a": "Seattle"}, passed=True)
    cache.put(near(v, 0.95, 3), SCOPE, "In which year was Starbucks founded?", "r-year", {"a": "1971"}, passed=True)
    hit = cache.lookup(v, SCOPE, question="When was Starbucks founded?")
    assert hit is not None and hit.run_id == "r-year"
    assert cache.stats().guard_rejections == 1
    assert cache.lookup(v, SCOPE).run_id == "r-where"  # without the question text there is no guard


def test_guard_can_be_turned_off(tmp_path):
    with SemanticCache(tmp_path / "c.sqlite", guard=False) as c:
        v = unit(1)
        c.put(v, SCOPE, "Where was Starbucks founded?", "r1", 1, passed=True)
        assert c.lookup(v, SCOPE, question="When was Starbucks founded?") is not None


def test_hits_are_written_for_other_instances_lru(tmp_path):
    path = tmp_path / "c.sqlite"
    vecs = [unit(200 + i) for i in range(4)]
    with SemanticCache(path, max_entries=3, threshold=0.99) as a:
        for i in range(3):
            a.put(vecs[i], SCOPE, f"q{i}", f"r{i}", i, passed=True)
        assert a.lookup(vecs[0], SCOPE) is not None  # pending touch, written on close
    with SemanticCache(path, max_entries=3, threshold=0.99) as b:
        b.put(vecs[3], SCOPE, "q3", "r3", 3, passed=True)  # evicts q1, the least recently used
        assert [b.lookup(v, SCOPE) is not None for v in vecs] == [True, False, True, True]
        assert b.lookup(vecs[0], SCOPE).hits == 3
