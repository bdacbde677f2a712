"""Prices: env overrides beat the built-in table, local calls are free, unknown is None."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from crew.llm.pricing import (
    PRICE_TABLE_VERSION,
    Price,
    base_model,
    cost_usd,
    reset_warnings,
    served_price,
    worst_case_cost,
)
from crew.llm.registry import price_for
from crew.settings import Settings, settings_from_values

TABLE = f"table:{PRICE_TABLE_VERSION}"


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    reset_warnings()
    yield
    reset_warnings()


def settings(**env: str) -> Settings:
    return settings_from_values(env)


def test_table_prices() -> None:
    price = price_for(settings(), "openai", "gpt-4o-mini", "gpt-4o-mini")
    assert price == Price(0.00015, 0.0006, TABLE)
    assert price_for(settings(), "openai", "gpt-4.1", None) == Price(0.002, 0.008, TABLE)
    assert price_for(settings(), "openai", "GPT-4o", None) == Price(0.0025, 0.01, TABLE)


@pytest.mark.parametrize(
    ("dated", "base"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4.1-nano", "gpt-4.1-nano"),
        ("o3-mini", "o3-mini"),
    ],
)
def test_dated_model_names(dated: str, base: str) -> None:
    assert base_model(dated) == base
    expected = price_for(settings(), "openai", base, None)
    assert expected is not None
    assert price_for(settings(), "openai", None, dated) == expected


def test_response_model_prices_an_unknown_alias() -> None:
    # A deployment alias unknown to the table, answered by a known dated model.
    price = price_for(settings(), "openai", "my-deployment", "gpt-4o-mini-2024-07-18")
    assert price == Price(0.00015, 0.0006, TABLE)


def test_env_override_by_requested_model() -> None:
    s = settings(
        OPENAI_PRICE_PROMPT_GPT_4O_MINI_PER_1K="0.001",
        OPENAI_PRICE_COMPLETION_GPT_4O_MINI_PER_1K="0.002",
    )
    assert price_for(s, "openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18") == Price(
        0.001, 0.002, "env"
    )


def test_env_override_by_response_model() -> None:
    s = settings(
        OPENAI_PRICE_PROMPT_LLAMA_3_1_70B_PER_1K="0.0005",
        OPENAI_PRICE_COMPLETION_LLAMA_3_1_70B_PER_1K="0.0007",
    )
    assert price_for(s, "openai", "default", "llama-3.1-70b") == Price(0.0005, 0.0007, "env")


def test_requested_model_override_wins_over_response_model_override() -> None:
    s = settings(
        OPENAI_PRICE_PROMPT_A_PER_1K="1",
        OPENAI_PRICE_COMPLETION_A_PER_1K="1",
        OPENAI_PRICE_PROMPT_B_PER_1K="2",
        OPENAI_PRICE_COMPLETION_B_PER_1K="2",
    )
    assert price_for(s, "openai", "a", "b") == Price(1.0, 1.0, "env")


def test_env_half_override_completes_from_table() -> None:
    s = settings(OPENAI_PRICE_PROMPT_GPT_4O_PER_1K="0.003")
    assert price_for(s, "openai", "gpt-4o", None) == Price(0.003, 0.01, "env")


def test_local_providers_cost_zero() -> None:
    for provider in ("ollama", "offline"):
        price = price_for(settings(), provider, "llama3.1:8b", "llama3.1:8b")
        assert price == Price(0.0, 0.0, "local")
        assert cost_usd(price, 10_000, 10_000) == 0.0


def test_unknown_model_is_none_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="crew.llm.pricing"):
        for _ in range(3):
            assert price_for(settings(), "openai", "mystery-model", "mystery-model") is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "mystery-model" in warnings[0].getMessage()
    assert "OPENAI_PRICE_PROMPT_MYSTERY_MODEL_PER_1K" in warnings[0].getMessage()


def test_incomplete_env_price_for_unknown_model_is_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = settings(OPENAI_PRICE_PROMPT_MYSTERY_PER_1K="0.1")
    with caplog.at_level(logging.WARNING, logger="crew.llm.pricing"):
        assert price_for(s, "openai", "mystery", None) is None
    assert "only one of two prices" in caplog.text


def test_cost_and_worst_case() -> None:
    price = Price(0.00015, 0.0006, TABLE)
    assert cost_usd(price, 1000, 500) == pytest.approx(0.00045)
    assert cost_usd(price, 0, 0) == 0.0
    assert worst_case_cost(price, 2000, 4096) == pytest.approx(0.0003 + 0.0024576)
    assert worst_case_cost(price, 2000, 4096) >= cost_usd(price, 2000, 100)


def test_a_list_price_applies_only_to_a_served_model(caplog: pytest.LogCaptureFixture) -> None:
    price = price_for(settings(), "openai", "gpt-4o-mini", None)
    assert price is not None
    served = frozenset({"gpt-4o-mini-2024-07-18"})
    assert served_price(price, "openai", "gpt-4o-mini", served) is price  # a dated name
    assert served_price(price, "openai", "gpt-4o-mini", frozenset({"crew-tiny"})) is None
    assert served_price(price, "openai", "gpt-4o", None) is None  # the list was unreadable
    warnings = [r.getMessage() for r in caplog.records]
    assert any("does not list this model" in w for w in warnings)
    assert any("could not be read" in w for w in warnings)
