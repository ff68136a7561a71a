from __future__ import annotations

import pytest

from config.settings import Settings, SettingsError, get_settings, unknown_variables
from userpath_client.contract import KEY_VARIABLE


def test_defaults_need_no_server() -> None:
    settings = Settings()
    assert settings.database_url == "sqlite:///userpath.db"
    assert settings.broker_url.startswith("sqla+sqlite://")
    assert settings.uses_embedded_database


def test_a_plain_postgresql_url_uses_psycopg_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERPATH_DATABASE_URL", "postgresql://u@db:5432/userpath")
    assert get_settings().database_url == "postgresql+psycopg://u@db:5432/userpath"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("USERPATH_DATABASE_URL", "mysql://root@localhost/x"),
        ("USERPATH_BROKER_URL", "kafka://localhost"),
        ("USERPATH_LOG_LEVEL", "LOUD"),
        ("USERPATH_AUTH_CACHE_SECONDS", "-1"),
    ],
)
def test_a_bad_value_names_the_variable_and_not_the_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        get_settings()
    message = str(error.value)
    assert message.startswith(f"invalid setting {variable}: ")
    assert "\n" not in message
    assert value not in message


def test_the_pepper_is_not_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERPATH_KEY_PEPPER", "very-secret-pepper")
    assert "very-secret-pepper" not in repr(get_settings())


def test_unknown_variables_are_named_with_their_closest_setting_and_the_tests_and_producers_are_not() -> None:
    environ = {
        "USERPATH_DATABSE_URL": "x",
        "USERPATH_ZZZ": "x",  # resembles nothing
        "userpath_log_level": "INFO",  # pydantic-settings reads any case: a setting
        "USERPATH_TEST_DATABASE_PREFIX": "x",
        KEY_VARIABLE: "up_live_...",  # the documented producers' key, in the same shell
        "PATH": "/bin",
    }
    assert unknown_variables(environ) == [("USERPATH_DATABSE_URL", "USERPATH_DATABASE_URL"), ("USERPATH_ZZZ", None)]
