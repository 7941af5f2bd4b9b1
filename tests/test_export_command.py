"""`tallyflow export` and `tallyflow reconcile --provider` as commands: options,
credentials from the environment only, and the exit codes of the one error policy."""
import pytest

from tallyflow import cli

PERIOD = ["--period-start", "2026-11-01T00:00:00Z", "--period-end", "2026-11-02T00:00:00Z",
          "--bigquery_project", "tallyflow-test"]


def test_export_is_a_command_with_its_options(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["export", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    for option in ("--to", "--period-start", "--mapping", "--api-base", "--api-key-secret",
                   "--concurrency", "--calls-per-second", "--stripe-api"):
        assert option in out
    assert "--api-key " not in out  # no flag takes a credential


@pytest.mark.parametrize("command", [["export", "--to"], ["reconcile", "--provider"]])
@pytest.mark.parametrize("provider,variable", [("stripe", "STRIPE_API_KEY"),
                                               ("orb", "ORB_API_KEY"),
                                               ("lago", "LAGO_API_KEY")])
def test_a_missing_api_key_is_a_configuration_error_naming_the_variable(
        command, provider, variable, monkeypatch, capsys):
    monkeypatch.delenv(variable, raising=False)
    assert cli.main([*command, provider, *PERIOD]) == 2
    assert variable in capsys.readouterr().err


def test_only_closed_periods_are_exported(monkeypatch, capsys):
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_x")
    code = cli.main(["export", "--to", "stripe", "--period-start", "2026-11-01T00:00:00Z",
                     "--period-end", "2999-01-01T00:00:00Z",
                     "--bigquery_project", "tallyflow-test"])
    assert code == 2 and "closed" in capsys.readouterr().err


def test_period_bounds_are_whole_seconds(monkeypatch, capsys):
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_x")
    code = cli.main(["export", "--to", "stripe", "--period-start", "2026-11-01T00:00:00.5Z",
                     "--period-end", "2026-11-02T00:00:00Z",
                     "--bigquery_project", "tallyflow-test"])
    assert code == 2 and "whole seconds" in capsys.readouterr().err


def test_reconcile_without_provider_is_still_the_stream_vs_batch_reconcile(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reconcile", "--help"])
    out = capsys.readouterr().out
    assert "--provider" in out and "streaming" in out.lower()


def test_a_bad_mapping_file_is_a_configuration_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORB_API_KEY", "k")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("orb:\n  customers: [not, a, mapping]\n")
    code = cli.main(["export", "--to", "orb", *PERIOD, "--mapping", str(mapping),
                     "--bigquery_endpoint", "http://127.0.0.1:9"])
    assert code == 2 and "orb.customers" in capsys.readouterr().err


def test_stripe_api_is_an_option_of_stripe_only(monkeypatch, capsys):
    monkeypatch.setenv("ORB_API_KEY", "k")
    assert cli.main(["export", "--to", "orb", *PERIOD, "--stripe-api", "v2"]) == 2
    assert "--stripe-api applies to --to stripe only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["export", "--to", "stripe", *PERIOD, "--stripe-api", "v3"])
    assert stop.value.code == 2
