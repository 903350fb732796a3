import pytest

from tray.settings.config import Config, ConfigError, load_config
from tray.system.paths import AppPaths


@pytest.fixture
def paths(tmp_path):
    return AppPaths(tmp_path / "config", tmp_path / "log", tmp_path / "data", tmp_path / "state")


def test_defaults_follow_the_design_notes(paths):
    config = load_config(env={}, paths=paths)
    assert config.ollama_host == "http://127.0.0.1:11434"
    assert config.ollama_model == "uncensored-llama3"
    assert config.health_check_interval == 30
    assert config.health_check_timeout == 5
    assert config.auto_restart_attempts == 3
    assert config.modelfile == str(paths.config_dir / "uncensored.Modelfile")
    assert config.source == str(paths.config_file)


def test_the_stuck_runner_bound_follows_the_model_load_budget_unless_set(paths, tmp_path):
    assert load_config(env={}, paths=paths).stuck_runner_seconds == 300 + 600
    file = tmp_path / "c.toml"
    file.write_text("model_load_timeout = 1200\n")
    assert load_config(file, env={}, paths=paths).stuck_runner_seconds == 1200 + 600
    env = {"OLLAMA_MANAGER_STUCK_RUNNER_TIMEOUT": "45"}
    assert load_config(file, env=env, paths=paths).stuck_runner_seconds == 45


def test_ollama_host_defaults_to_the_environment(paths):
    config = load_config(env={"OLLAMA_HOST": "0.0.0.0:9999"}, paths=paths)
    assert config.host.url == "http://127.0.0.1:9999"


def test_file_then_environment_precedence(paths, tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('health_check_interval = 10\nollama_model = "mine"\nnotifications = false\n')
    env = {"OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL": "2.5", "OLLAMA_MANAGER_NOTIFICATIONS": "yes"}
    config = load_config(file, env=env, paths=paths)
    assert config.health_check_interval == 2.5
    assert config.ollama_model == "mine"
    assert config.notifications is True


def test_config_env_variable_names_the_file(paths, tmp_path):
    file = tmp_path / "other.toml"
    file.write_text("auto_restart_attempts = 7\n")
    assert load_config(env={"OLLAMA_MANAGER_CONFIG": str(file)}, paths=paths).auto_restart_attempts == 7


def test_platform_file_is_used_by_default(paths):
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_text('health_probe = "api"\n')
    assert load_config(env={}, paths=paths).health_probe == "api"


@pytest.mark.parametrize(
    "text, message",
    [
        ("health_check_interval = 'x'", "key 'health_check_interval' must be a number, got 'x'"),
        ("auto_restart_attempts = 1.5", "key 'auto_restart_attempts' must be a whole number, got 1.5"),
        ("auto_restart_attempts = -1", "key 'auto_restart_attempts' must be at least 0, got -1"),
        ("notifications = 1", "key 'notifications' must be true or false, got 1"),
        ("health_probe = 'deep'", "key 'health_probe' must be one of 'inference', 'api', got 'deep'"),
        ("ollama_model = 3", "key 'ollama_model' must be a string, got 3"),
        ("stuck_runner_timeout = -5", "key 'stuck_runner_timeout' must be at least 0, got -5"),
        ("colour = 'red'", "unknown key 'colour'"),
        ("[gpu]\nindex = 1", "unknown section 'gpu'"),
        ("x = [", "invalid TOML: Invalid value (at end of document)"),
        ("a = 1\nb = = 2", "invalid TOML: Invalid value (at line 2, column 5)"),
    ],
)
def test_bad_file_gives_one_line_naming_file_key_and_problem(paths, tmp_path, text, message):
    file = tmp_path / "bad.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(file, env={}, paths=paths)
    assert str(err.value) == f"{file}: {message}"
    assert "\n" not in str(err.value)


def test_bad_environment_value_names_the_variable(paths):
    with pytest.raises(ConfigError) as err:
        load_config(env={"OLLAMA_MANAGER_STOP_TIMEOUT": "soon"}, paths=paths)
    assert str(err.value) == "environment variable OLLAMA_MANAGER_STOP_TIMEOUT must be a number, got 'soon'"


def test_explicit_missing_file_is_an_error(paths, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.toml", env={}, paths=paths)
    assert str(err.value) == f"{tmp_path / 'nope.toml'}: config file not found"


def test_every_setting_has_help():
    import dataclasses

    for f in dataclasses.fields(Config):
        if not f.metadata.get("internal"):
            assert f.metadata["help"], f.name


def test_alerts_section(paths, tmp_path):
    file = tmp_path / "c.toml"
    file.write_text("[alerts]\nmemory_mb = 8192\nleak_restart = true\n")
    config = load_config(file, env={"OLLAMA_MANAGER_ALERTS_CPU_PERCENT": "90"}, paths=paths)
    assert config.alerts.memory_mb == 8192
    assert config.alerts.leak_restart is True
    assert config.alerts.cpu_percent == 90.0
    assert config.alerts.restarts_per_hour == 3  # default kept


@pytest.mark.parametrize(
    "text, message",
    [
        ("[alerts]\nmemory = 1", "unknown key 'memory' in [alerts]"),
        ("[alerts]\nmemory_mb = 'lots'", "key 'alerts.memory_mb' must be a whole number, got 'lots'"),
        ("[alerts]\nclear_ratio = 2.0", "key 'alerts.clear_ratio' must be at most 1, got 2"),
        ("[alerts]\nclear_ratio = 0", "alerts.clear_ratio must be in (0, 1], got 0.0"),
        ("alerts = 3", "'alerts' must be a [alerts] section"),
    ],
)
def test_bad_alerts_section(paths, tmp_path, text, message):
    file = tmp_path / "c.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(file, env={}, paths=paths)
    assert str(err.value) == f"{file}: {message}"


def test_every_setting_in_every_section_has_help():
    import dataclasses

    def walk(cls, prefix=""):
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            assert f.metadata.get("help"), prefix + f.name
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
                walk(f.default_factory, prefix + f.name + ".")

    walk(Config)


# --------------------------------------------------------------------------- one validator: limits, hosts, names


NON_FINITE_AND_HUGE = [
    # Each of these stopped supervision: the monitor thread died, spun at 95 % CPU, or the gateway failed every request.
    ("health_check_interval", "1e308", "must be at most 86400, got 1e+308"),
    ("health_check_interval", "nan", "must be a finite number, got nan"),
    ("health_check_timeout", "nan", "must be a finite number, got nan"),
    ("stop_timeout", "nan", "must be a finite number, got nan"),
    ("health_check_interval", "inf", "must be a finite number, got inf"),
    ("gateway.first_byte_timeout", "nan", "must be a finite number, got nan"),
    ("alerts.memory_mb", "9223372036854775807", "must be at most 1e+09, got 9223372036854775807"),
]


def toml_line(key: str, value: str) -> str:
    section, _, name = key.rpartition(".")
    return f"[{section}]\n{name} = {value}\n" if section else f"{name} = {value}\n"


@pytest.mark.parametrize(("key", "value", "problem"), NON_FINITE_AND_HUGE)
def test_non_finite_and_huge_numbers_are_refused_in_the_file(paths, tmp_path, key, value, problem):
    file = tmp_path / "c.toml"
    file.write_text(toml_line(key, value))
    with pytest.raises(ConfigError) as err:
        load_config(file, env={}, paths=paths)
    assert str(err.value) == f"{file}: key '{key}' {problem}"


@pytest.mark.parametrize(("key", "value", "problem"), NON_FINITE_AND_HUGE)
def test_non_finite_and_huge_numbers_are_refused_in_the_environment(paths, key, value, problem):
    name = "OLLAMA_MANAGER_" + key.replace(".", "_").upper()
    with pytest.raises(ConfigError) as err:
        load_config(env={name: value}, paths=paths)
    assert str(err.value) == f"environment variable {name} {problem}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("status_port = 70000", "key 'status_port' must be at most 65535, got 70000"),
        ("[gateway]\nport = -1", "key 'gateway.port' must be at least 0, got -1"),
        (
            'ollama_host = "localhost:70000"',
            "key 'ollama_host' must have a port from 1 to 65535, got 'localhost:70000'",
        ),
        (
            'ollama_host = "ftp://box:21"',
            "key 'ollama_host' must be an http:// or https:// address, got 'ftp://box:21'",
        ),
        (
            'ollama_host = "http://me@box:11434"',
            "key 'ollama_host' must be an address such as 127.0.0.1:11434 or http://host:11434, "
            "got 'http://me@box:11434'",
        ),
        (
            'ollama_model = "my model"',
            "key 'ollama_model' must be a model name such as 'llama3' or 'namespace/model:tag', got 'my model'",
        ),
        (
            'ollama_model = ""',
            "key 'ollama_model' must be a model name such as 'llama3' or 'namespace/model:tag', got ''",
        ),
        ('modelfile = "a\\nb"', "key 'modelfile' must be one line of text, got a control character"),
        ("[alerts]\ncpu_percent = 250", "key 'alerts.cpu_percent' must be at most 100, got 250"),
        (
            '[cloud]\nbase_url = "https://box:99999/v1"',
            "key 'cloud.base_url' must have a port from 1 to 65535, got 'https://box:99999/v1'",
        ),
        ('[cloud]\napi_key_env = "sk-secret"', None),  # refused without echoing what may be the key itself
        ("auto_restart_attempts = " + "9" * 400, "key 'auto_restart_attempts' must be at most 1000, got " + "9" * 400),
        ("health_check_interval = " + "9" * 400, "key 'health_check_interval' must be a finite number, got 400 digits"),
        ("x = " + "1" * 5000, "invalid TOML: a number with too many digits"),
        ("health_check_interval = [1, 2]", "key 'health_check_interval' must be a number, got an array"),
        ('ollama_model = "' + "m" * 100 + '"', None),  # too long a model part: the line shows the value cut short
    ],
)
def test_ports_hosts_and_model_names_are_checked_as_ollama_would(paths, tmp_path, text, message):
    file = tmp_path / "c.toml"
    file.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(file, env={}, paths=paths)
    line = str(err.value)
    assert "\n" not in line and len(line) < len(str(file)) + 1000
    if message is None:
        assert "…" in line or ("api_key_env" in line and "sk-secret" not in line)
    else:
        assert line == f"{file}: {message}"


def test_an_unusable_ollama_host_in_the_environment_is_refused(paths):
    with pytest.raises(ConfigError) as err:
        load_config(env={"OLLAMA_HOST": "0.0.0.0:99999"}, paths=paths)
    assert str(err.value) == (
        "environment variable OLLAMA_HOST must have a port from 1 to 65535, got '0.0.0.0:99999' (or set ollama_host)"
    )


def test_a_deeply_nested_array_is_one_line_not_a_recursion_error(paths, tmp_path):
    file = tmp_path / "c.toml"
    file.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(file, env={}, paths=paths)
    assert str(err.value) == f"{file}: invalid TOML: arrays or tables nested too deeply"


def test_a_utf8_byte_order_mark_is_accepted(paths, tmp_path):
    file = tmp_path / "c.toml"
    file.write_bytes(b"\xef\xbb\xbfhealth_check_interval = 12\n")
    assert load_config(file, env={}, paths=paths).health_check_interval == 12


def test_a_fifo_as_the_config_file_is_refused_at_once(paths, tmp_path):
    import os
    import threading

    fifo = tmp_path / "c.toml"
    os.mkfifo(fifo)
    outcome: list[str] = []
    reader = threading.Thread(target=lambda: outcome.append(_load_error(fifo, paths)), daemon=True)
    reader.start()
    reader.join(30)
    if reader.is_alive():  # unblock the reader before failing: a writer end lets its open() return
        with open(fifo, "w"):
            pass
        reader.join(5)
        pytest.fail("reading a FIFO as the config file blocked")
    assert outcome == [f"{fifo}: is a named pipe (FIFO), not a regular file"]


def _load_error(path, paths) -> str:
    try:
        load_config(path, env={}, paths=paths)
    except ConfigError as exc:
        return str(exc)
    return "loaded"


def test_dev_zero_and_huge_files_are_refused_without_reading_them(paths, tmp_path):
    assert _load_error("/dev/zero", paths) == "/dev/zero: is a character device, not a regular file"
    huge = tmp_path / "huge.toml"
    with open(huge, "wb") as handle:
        handle.truncate(3 * 2**30)  # sparse: 3 GiB long, nothing on disk
    assert _load_error(huge, paths) == f"{huge}: is too large (3,221,225,472 bytes; at most 1,048,576)"


def test_a_lone_surrogate_in_a_setting_is_refused(paths):
    with pytest.raises(ConfigError) as err:
        load_config(env={"OLLAMA_MANAGER_OLLAMA_MODEL": "llama\udcff"}, paths=paths)
    assert str(err.value) == "environment variable OLLAMA_MANAGER_OLLAMA_MODEL must be valid text, got a lone surrogate"


def test_every_number_setting_has_a_finite_maximum():
    from tray.dashboard.settings_form import setting_specs

    numbers = [spec for spec in setting_specs() if spec.kind in ("int", "float")]
    assert numbers and all(spec.minimum is not None for spec in numbers)
    assert [spec.key for spec in numbers if spec.maximum is None] == []


def test_settings_built_in_code_pass_the_same_limits():
    from tray.settings.gateway import GatewaySettings

    with pytest.raises(ValueError, match=r"^health_check_timeout must be a finite number, got nan$"):
        Config(health_check_timeout=float("nan"))
    with pytest.raises(ValueError, match=r"^gateway\.first_byte_timeout must be a finite number, got nan$"):
        GatewaySettings(first_byte_timeout=float("nan"))
