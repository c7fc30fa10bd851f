"""The risk policy's topics: keywords in the question or the answer, and the nearest-example classifier."""

from __future__ import annotations

import pytest

from client.pipeline import TopicClassifier, topic_reasons
from core.embedder import get_embedder
from core.settings import ApprovalSettings, RiskTopic, Settings


@pytest.fixture(scope="module")
def embedder():
    return get_embedder(Settings().model_dir, threads=1)


def test_keywords_match_the_question_or_the_answer_at_word_starts():
    policy = ApprovalSettings(topics={"medical": RiskTopic(keywords=["dosage", "diagnos"])})
    assert topic_reasons(policy, "What is the usual dosage?", "", None) == ["medical topic (dosage)"]
    assert topic_reasons(policy, "What does the report say?", "The diagnosis was confirmed.", None) == [
        "medical topic (diagnos)"]
    assert topic_reasons(policy, "What does prediagnosis mean here?", "", None) == []  # not at a word start


def test_the_classifier_holds_a_risky_question_without_a_keyword(embedder):
    policy = Settings().approval  # the shipped topics: keywords and example questions
    clf = TopicClassifier(embedder, policy)
    question = "Would it be wise to put my whole emergency fund into crypto?"
    assert topic_reasons(policy.model_copy(update={"topics": {
        n: t.model_copy(update={"examples": []}) for n, t in policy.topics.items()}}), question, "", clf) == []
    reasons = topic_reasons(policy, question, "", clf)
    assert len(reasons) == 1 and reasons[0].startswith("financial topic (close to ")
    sim, example = clf.nearest("financial", question)
    assert sim >= policy.topics["financial"].similarity and example in policy.topics["financial"].examples
    # Everyday questions stay unheld; raising the threshold above the similarity releases the risky one.
    for safe in ("How do I rotate an API key without downtime?", "How long are encrypted backups kept?",
                 "Who is on call this week?"):
        assert topic_reasons(policy, safe, "", clf) == [], safe
    strict = policy.model_copy(update={"topics": {
        n: t.model_copy(update={"similarity": min(1.0, sim + 0.01)}) for n, t in policy.topics.items()}})
    assert not any(r.startswith("financial") for r in topic_reasons(strict, question, "", TopicClassifier(
        embedder, strict)))
    assert clf.nearest("no-such-topic", question) == (0.0, "")
