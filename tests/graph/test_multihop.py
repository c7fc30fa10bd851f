"""Multi-hop passage search: subject-weighted entity-chunk edges and the second hop (``hop_chunks``).

Hand-written bridge question: the first passage names the book's author, the answer sits in the
passage *about* the author, and two distractors merely mention her.
"""

from __future__ import annotations

import pytest

from core.errors import InvalidInput
from core.settings import Settings
from graph import GraphEngine, GraphItem
from graph import search as gsearch

QUESTION = "Where was the author of The Silent River born?"
BRIDGE = [
    GraphItem(doc_id="novel", title="The Silent River",
              text="The Silent River is a 2001 novel by Anna Kowalski. It follows a fisherman on the Vistula."),
    GraphItem(doc_id="author", title="Anna Kowalski",
              text="Anna Kowalski is a Polish novelist. She was born in Krakow and studied at Jagiellonian University."),
    GraphItem(doc_id="fair", title="Warsaw Book Fair",
              text="The Warsaw Book Fair invited Anna Kowalski, Jan Nowak and Olga Tokarczuk in 2015. "
                   "It is held every May."),
    GraphItem(doc_id="prize", title="Nike Award",
              text="The Nike Award jury shortlisted Anna Kowalski and Jan Nowak in 2012. The award is given in Warsaw."),
    GraphItem(doc_id="nowak", title="Jan Nowak", text="Jan Nowak is a Polish poet. He was born in Gdansk."),
    # no titles: the subject is the entity the text opens with, when it opens with one
    GraphItem(doc_id="lead", text="Maria Lis is a Polish painter. Her studio is in Lodz."),
    GraphItem(doc_id="no-lead", text="In 1990 the museum in Lodz showed paintings by Maria Lis."),
]


@pytest.fixture(scope="module")
def bridge(tmp_path_factory, model_dir, embedder):
    settings = Settings(data_dir=tmp_path_factory.mktemp("bridge"), model_dir=model_dir)
    engine = GraphEngine(settings, embedder=embedder)
    assert engine.ingest_texts(BRIDGE).added == len(BRIDGE)
    return engine


def _chunk(engine: GraphEngine, doc_id: str) -> str:
    return engine._open(None).state.docs[doc_id].chunk_ids[0]


def test_chunk_subjects_from_titles_and_leading_entities(bridge):
    state = bridge._open(None).state
    subjects = gsearch.chunk_subjects(state.graph, state.docs, state.chunks, state.aliases)
    assert subjects[_chunk(bridge, "author")] == {"anna kowalski"}
    assert subjects[_chunk(bridge, "novel")] == {"silent river"}  # the title, not the author it names
    assert subjects[_chunk(bridge, "lead")] == {"maria lis"}  # no title: the entity the text opens with
    assert _chunk(bridge, "no-lead") not in subjects  # opens with a date, names Maria Lis later: no subject


def test_hop_seeds_sum_the_weights_of_the_chunks_naming_an_entity(bridge):
    bip = bridge._bipartite(bridge._open(None))
    seeds = bip.hop_seeds({_chunk(bridge, "fair"): 1.0, _chunk(bridge, "prize"): 0.5, "no-such-chunk": 3.0})
    assert seeds["anna kowalski"] == pytest.approx(1.5)  # both name her
    assert seeds["jan nowak"] == pytest.approx(1.5)
    assert seeds["warsaw book fair"] == pytest.approx(1.0) and "nike award" in seeds
    assert "silent river" not in seeds
    assert bip.hop_seeds({_chunk(bridge, "fair"): 0.0}) == {}


def test_subject_edges_lead_the_walk_to_the_passage_about_an_entity(bridge, embedder):
    flat = GraphEngine(bridge.settings, embedder=embedder, subject_weight=1.0)  # every mention alike
    chunk = _chunk(bridge, "novel")
    weighted = [c.doc_id for c in bridge.ppr_search(QUESTION, k=7, hop_chunks={chunk: 1.0}).chunks]
    plain = [c.doc_id for c in flat.ppr_search(QUESTION, k=7, hop_chunks={chunk: 1.0}).chunks]
    assert weighted[:2] == ["novel", "author"]
    assert plain.index("author") > plain.index("fair")  # a passing mention weighs as much as the subject


def test_hop_chunks_add_the_entities_of_the_first_hits(bridge):
    chunk = _chunk(bridge, "novel")
    before = {c.doc_id: c for c in bridge.ppr_search(QUESTION, k=7).chunks}
    after = {c.doc_id: c for c in bridge.ppr_search(QUESTION, k=7, hop_chunks={chunk: 1.0}).chunks}
    assert "anna kowalski" not in {s.id for s in bridge.ppr_search(QUESTION, k=1).seeds}  # the question never names her
    assert after["author"].score > before["author"].score
    assert "anna kowalski" in after["author"].entities  # the bridge entity is shown on the hit
    assert [c.score for c in after.values()] == sorted((c.score for c in after.values()), reverse=True)
    unknown = bridge.ppr_search(QUESTION, k=7, hop_chunks={"no-such-chunk": 1.0})
    assert [(c.doc_id, c.score) for c in unknown.chunks] == [(d, c.score) for d, c in before.items()]


@pytest.mark.parametrize("hop", [{"c": -1.0}, {"c": float("nan")}, {"c": True}, ["c"]])
def test_bad_hop_chunks_are_rejected(bridge, hop):
    with pytest.raises(InvalidInput, match="hop_chunks"):
        bridge.ppr_search(QUESTION, hop_chunks=hop)


@pytest.mark.parametrize("weight", [0, -1.0, float("inf")])
def test_bad_subject_weight_is_rejected(bridge, embedder, weight):
    with pytest.raises(InvalidInput, match="subject_weight"):
        GraphEngine(bridge.settings, embedder=embedder, subject_weight=weight)


def test_a_leading_entity_must_open_the_text_with_whole_words():
    head = gsearch._lead("  The Maria Lisowska Foundation is a charity.")
    assert gsearch._opens_with(head, "Maria Lisowska Foundation")
    assert gsearch._opens_with(head, "the Maria Lisowska Foundation")  # a leading article aside
    assert not gsearch._opens_with(head, "Maria Lis")  # a prefix of a word is not the subject
    assert not gsearch._opens_with(head, "Foundation")
