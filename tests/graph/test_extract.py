"""Extraction on small hand-written texts: entities, relations, aliases, provenance."""

from __future__ import annotations

from graph.canonical import (
    AliasTable,
    find_acronyms,
    find_aka,
    normalize,
    person_key,
    strip_qualifier,
)
from graph.extract import extract_documents


def _extract(nlp, text: str, title: str | None = None, chunk_id: str = "c0"):
    return extract_documents(nlp, [(title, [(chunk_id, text)])])[0]


def _triples(ex) -> set[tuple[str, str, str]]:
    return {(ex.mentions[t.subj].key, t.rel, ex.mentions[t.obj].key) for t in ex.triples}


def test_normalize_case_articles_possessive_and_quotes():
    assert normalize("The  International Business Machines's") == "international business machines"
    assert normalize("\u201cThe Seven Habits\u201d") == "seven habits"
    assert normalize("IBM") == normalize("ibm") == "ibm"
    assert person_key("stephen r. covey") == "stephen covey"
    assert person_key("stephen richards covey") == "stephen richards covey"
    assert strip_qualifier("Mercury (planet)") == "Mercury"


def test_find_acronyms_schwartz_hearst():
    assert find_acronyms("He joined International Business Machines (IBM) in 1990.") == [
        ("IBM", "International Business Machines")]
    assert find_acronyms("The World Health Organization (WHO) met.") == [("WHO", "World Health Organization")]
    assert find_acronyms("It costs a lot (see below).") == []
    assert find_acronyms("The company (ACME) was sold.") == []  # letters do not spell the acronym


def test_find_aka_pairs():
    text = "Franklin Covey Co., also known as FranklinCovey, is based in Utah."
    spans = [(0, 18), (34, 47), (61, 65)]
    assert find_aka(text, spans) == [(0, 1)]


def test_alias_table_is_order_independent_and_acyclic():
    a, b = AliasTable(), AliasTable()
    a.add("d1", [("ibm", "international business machines")])
    a.add("d2", [("ibm", "ibm corporation")])
    a.add("d3", [("ibm", "international business machines")])
    b.add("d3", [("ibm", "international business machines")])
    b.add("d2", [("ibm", "ibm corporation")])
    b.add("d1", [("ibm", "international business machines")])
    assert a.resolve("ibm") == b.resolve("ibm") == "international business machines"  # two documents agree
    a.add("d9", [("international business machines", "ibm")])  # longer -> shorter is refused
    assert a.resolve("international business machines") == "international business machines"
    a.remove("d1", [("ibm", "international business machines")])
    a.remove("d3", [("ibm", "international business machines")])
    assert a.resolve("ibm") == "ibm corporation"


def test_entities_relations_and_provenance(nlp):
    text = ("Marie Curie discovered polonium with Pierre Curie in Paris. "
            "Curie won the Nobel Prize in Physics in 1903. She was born in Warsaw.")
    ex = _extract(nlp, text, title="Marie Curie")
    keys = {m.key: m for m in ex.mentions}
    for key in ("marie curie", "pierre curie", "paris", "warsaw", "nobel prize in physics"):
        assert key in keys, key
    assert "1903" not in keys  # dates are values, not entities
    # "Curie" alone could be Marie or Pierre: the title (the subject) decides
    assert all(m.key != "curie" for m in ex.mentions)
    assert any(m.key == "curie" for m in _extract(nlp, text).mentions)  # no title: ambiguous, left alone
    assert ("marie curie", "win", "nobel prize in physics") in _triples(ex)
    assert ("marie curie", "discover_with", "pierre curie") in _triples(ex)
    # provenance: every mention points at its chunk and its sentence
    for m in ex.mentions:
        assert m.chunk_id == "c0"
        if m.in_title:
            assert (m.start, m.end) == (0, len("Marie Curie"))
        else:
            sentence = text[m.start:m.end]
            assert m.surface in sentence and sentence.endswith(".")
    title = [m for m in ex.mentions if m.in_title]
    assert len(title) == 1 and title[0].key == "marie curie" and title[0].label == "PERSON"


def test_short_person_name_joins_the_unique_full_name(nlp):
    ex = _extract(nlp, "Stephen Covey wrote several books. Covey lived in Provo, Utah.")
    covey = [m for m in ex.mentions if m.surface == "Covey"]
    assert covey and all(m.key == "stephen covey" for m in covey)


def test_passive_agent_and_participle_relations(nlp):
    ex = _extract(nlp, "The Republic was written by Plato. Sapiens is a popular history book written by Yuval Noah Harari.")
    triples = _triples(ex)
    assert ("plato", "write", "republic") in triples
    assert ("yuval noah harari", "write", "popular history book") in triples


def test_acronym_and_aka_aliases(nlp):
    ex = _extract(nlp, "International Business Machines (IBM) is based in Armonk. Franklin Covey Co., also known as "
                       "FranklinCovey, sells planners.")
    assert ("ibm", "international business machines") in ex.aliases
    assert ("franklincovey", "franklin covey co") in ex.aliases
    ent = [m for m in ex.mentions if m.key == "international business machines"]
    assert ent and ent[0].label == "ORG"


def test_one_pipe_over_many_documents_keeps_order(nlp):
    docs = [("Paris", [("p0", "Paris is the capital of France.")]),
            (None, [("w0", "Warsaw is the capital of Poland."), ("w1", "Chopin was born near Warsaw.")])]
    a, b = extract_documents(nlp, docs, batch_size=2)
    assert {m.key for m in a.mentions} >= {"paris", "france"}
    assert {m.key for m in b.mentions} >= {"warsaw", "poland", "chopin"}
    assert {m.chunk_id for m in b.mentions} == {"w0", "w1"}
    assert not any(m.in_title for m in b.mentions)
