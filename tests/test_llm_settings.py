import pytest

from coder.errors import UsageError
from coder.llm.settings import LLMSettings


def test_defaults_are_off_and_round_trip():
    settings = LLMSettings()
    assert not settings.enabled
    assert LLMSettings.from_mapping(settings.to_dict()) == settings


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"backend": "ollama"}, "backend must be one of"),
        ({"backend": "openai"}, "needs base_url and model"),
        ({"weight": 1.5}, r"weight must be in \[0, 1\]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"scope": "all"}, "scope must be one of"),
    ],
    ids=["backend", "openai-without-url", "weight", "max-new-tokens", "scope"],
)
def test_bad_values_are_refused(values, message):
    with pytest.raises(UsageError, match=message):
        LLMSettings(**values)


def test_unknown_config_keys_are_refused():
    with pytest.raises(UsageError, match=r"unknown LLM settings \['temperature'\]"):
        LLMSettings.from_mapping({"backend": "local", "temperature": 0.7})
