"""The config schema: defaults of every section, refusals (one line each), warnings, path resolution."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from mindie_like.config import (ConfigError, LoadedConfig, find_config_path, home_dir, load_config, resolve_path,
                                to_engine_config, validate_config)
from mindie_like.config.loader import INSTALL_ROOT

REPO = Path(__file__).resolve().parents[3]
MODEL = "BackendConfig.ModelDeployConfig.ModelConfig[0]"


def minimal() -> dict:
    return {"BackendConfig": {"ModelDeployConfig": {"ModelConfig": [{"modelName": "m", "modelWeightPath": "w"}]}}}


def valid(data=None):
    cfg, warn, debug = validate_config(data if data is not None else minimal(), env={})
    return cfg


# -- defaults -------------------------------------------------------------------------------------------------
def test_server_defaults():
    s = valid().ServerConfig
    assert (s.ipAddress, s.managementIpAddress, s.port, s.managementPort, s.metricsPort) == \
        ("127.0.0.1", "127.0.0.1", 1025, 1026, 1027)
    assert s.allowAllZeroIpListening is False and s.httpsEnabled is True
    assert (s.maxLinkNum, s.maxRequestLength, s.maxJsonDepth, s.tokenTimeout, s.e2eTimeout) == (1000, 40, 10, 600, 600)
    assert s.tlsCaPath == "security/ca/" and s.tlsCaFile == ["ca.pem"]
    assert s.tlsCert == "security/certs/server.pem" and s.tlsPk == "security/keys/server.key.pem"
    assert s.tlsPkPwd == "security/pass/key_pwd.txt" and s.tlsCrlFiles == ["server_crl.pem"]
    assert s.managementTlsCaFile == ["management_ca.pem"] and s.metricsTlsCaFile == ["metrics_ca.pem"]
    assert s.tlsMinVersion == "1.2" and s.shutdownGracePeriod == 10 and s.inferMode == "standard"
    assert s.responsesStoreSize == 1000


def test_backend_defaults():
    b = valid().BackendConfig
    assert b.backendName == "mindieservice_llm_engine" and b.modelInstanceNumber == 1
    assert b.npuDeviceIds == [[0]] and b.tokenizerProcessNumber == 8 and b.multiNodesInferEnabled is False


def test_npu_device_ids_default_follows_world_size():
    d = minimal()
    d["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]["worldSize"] = 4
    assert valid(d).BackendConfig.npuDeviceIds == [[0, 1, 2, 3]]


def test_model_deploy_and_model_defaults():
    c = valid()
    d, m = c.deploy, c.model
    assert (d.maxSeqLen, d.maxInputTokenLen, d.truncation) == (2560, 2048, 0)
    assert m.modelInstanceType == "Standard" and m.worldSize == 1 and m.npuMemSize == -1 and m.cpuMemSize == 5
    assert m.backendType == "atb" and m.trustRemoteCode is False and m.plugin_params == {} and m.models == {}
    assert (m.dtype, m.device, m.numThreads) == ("auto", "auto", 0)


def test_schedule_defaults():
    s = valid().schedule
    assert (s.cacheBlockSize, s.maxPrefillBatchSize, s.maxPrefillTokens, s.maxBatchSize, s.maxIterTimes) == \
        (128, 50, 8192, 200, 512)
    assert s.templateType == "Standard" and s.enablePrefixCache is None and s.maxPreemptCount == 0
    assert s.maxQueueDelayMicroseconds == 5000 and s.supportSelectBatch is False


def test_log_defaults():
    lc = valid().LogConfig
    assert (lc.logLevel, lc.logFileSize, lc.logFileNum, lc.logPath) == ("Info", 20, 20, "logs/mindie-server.log")


def test_shipped_config_is_valid():
    data = json.loads((REPO / "conf" / "config.json").read_text())
    cfg, warn, _ = validate_config(data, env={})
    assert warn == []
    assert cfg.model.modelWeightPath == "models/qwen2.5-coder-0.5b-instruct" and cfg.ServerConfig.httpsEnabled


# -- refusals -------------------------------------------------------------------------------------------------
def _set(path: str, value):
    def apply(d):
        node = d
        parts = path.split(".")
        for p in parts[:-1]:
            if p == "M":
                node = node["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]
            else:
                node = node.setdefault(p, {})
        if value is _DELETE:
            node.pop(parts[-1])
        else:
            node[parts[-1]] = value
    return apply


_DELETE = object()

INVALID = [
    (_set("ServerConfig.port", 80), "ServerConfig.port: 80 is not in [1024, 65535]"),
    (_set("ServerConfig.managementPort", 70000), "ServerConfig.managementPort: 70000 is not in [1024, 65535]"),
    (_set("ServerConfig.port", "1025"), 'ServerConfig.port: "1025" is not an integer'),
    (_set("ServerConfig.ipAddress", "0.0.0.0"),
     "ServerConfig.ipAddress: 0.0.0.0 listens on every interface; set ServerConfig.allowAllZeroIpListening to "
     "true to allow it"),
    (_set("ServerConfig.ipAddress", "localhost"), 'ServerConfig.ipAddress: "localhost" is not an IPv4 or IPv6 address'),
    (_set("ServerConfig.maxLinkNum", 0), "ServerConfig.maxLinkNum: 0 is not in [1, 4096]"),
    (_set("ServerConfig.maxLinkNum", 5000), "ServerConfig.maxLinkNum: 5000 is not in [1, 4096]"),
    (_set("ServerConfig.responsesStoreSize", -1), "ServerConfig.responsesStoreSize: -1 is not in [0, 1000000]"),
    (_set("ServerConfig.responsesStoreSize", "10"), 'ServerConfig.responsesStoreSize: "10" is not an integer'),
    (_set("ServerConfig.maxRequestLength", 101), "ServerConfig.maxRequestLength: 101 is not in [1, 100]"),
    (_set("ServerConfig.maxJsonDepth", 9), "ServerConfig.maxJsonDepth: 9 is not in [10, 100]"),
    (_set("ServerConfig.httpsEnabled", "yes"), 'ServerConfig.httpsEnabled: "yes" is not true or false'),
    (_set("ServerConfig.tlsCaFile", "ca.pem"), 'ServerConfig.tlsCaFile: "ca.pem" is not a list'),
    (_set("ServerConfig.tlsMinVersion", "1.1"), 'ServerConfig.tlsMinVersion: "1.1" is not one of "1.2", "1.3"'),
    (_set("M.modelName", "my model"), f'{MODEL}.modelName: "my model" must be 1..256 characters of [A-Za-z0-9._-]'),
    (_set("M.modelName", _DELETE), f"{MODEL}.modelName: missing (required)"),
    (_set("M.worldSize", 0), f"{MODEL}.worldSize: 0 is not in [1, 64]"),
    (_set("M.npuMemSize", 0), f"{MODEL}.npuMemSize: 0 must be -1 (a fraction of the free device memory) or > 0"),
    (_set("M.cpuMemSize", -1), f"{MODEL}.cpuMemSize: -1 is not in [0, 4096]"),
    (_set("M.backendType", "mindie"), f'{MODEL}.backendType: "mindie" is not one of "atb", "torch"'),
    (_set("M.plugin_params", "{oops"),
     f'{MODEL}.plugin_params: "{{oops" is not a JSON object (Expecting property name enclosed in double quotes: '
     f'line 1 column 2 (char 1))'),
    (_set("M.models", {"deepseek_v3": {}, "deepseekv2": {}}),
     f'{MODEL}.models: "deepseek_v3" and "deepseekv2" are the same model type (deepseekv2): keep one'),
    (_set("M.models", {"qwen2": {"enable_reasoning": "on"}}),
     f'{MODEL}.models.qwen2.enable_reasoning: "on" is not true or false'),
    (_set("BackendConfig.ModelDeployConfig.maxInputTokenLen", 4096),
     "BackendConfig.ModelDeployConfig.maxInputTokenLen: 4096 is greater than maxSeqLen (2560)"),
    (_set("BackendConfig.ModelDeployConfig.truncation", 2),
     "BackendConfig.ModelDeployConfig.truncation: 2 is not one of false, true, 0, -1, 1"),
    (_set("BackendConfig.ModelDeployConfig.ModelConfig", []),
     "BackendConfig.ModelDeployConfig.ModelConfig: [] is too short (at least 1 required)"),
    (_set("BackendConfig.npuDeviceIds", [[0, 1]]), "BackendConfig.npuDeviceIds: [0, 1] has 2 devices but worldSize is 1"),
    (_set("BackendConfig.ScheduleConfig.cacheBlockSize", 96),
     "BackendConfig.ScheduleConfig.cacheBlockSize: 96 is not a power of two"),
    (_set("BackendConfig.ScheduleConfig.cacheBlockSize", 256),
     "BackendConfig.ScheduleConfig.cacheBlockSize: 256 is not in [1, 128]"),
    (_set("BackendConfig.ScheduleConfig.maxPrefillTokens", 1024),
     "BackendConfig.ScheduleConfig.maxPrefillTokens: 1024 is less than ModelDeployConfig.maxInputTokenLen (2048); "
     "raise it or use templateType \"Mix\" (chunked prefill)"),
    (_set("BackendConfig.ScheduleConfig.templateType", "Fast"),
     'BackendConfig.ScheduleConfig.templateType: "Fast" is not one of "Standard", "Mix"'),
    (_set("BackendConfig.ScheduleConfig.maxPrefillBatchSize", 300),
     "BackendConfig.ScheduleConfig.maxPrefillBatchSize: 300 is greater than maxBatchSize (200)"),
    (_set("LogConfig.logLevel", "Loud"), 'LogConfig.logLevel: "Loud" is not one of "Debug", "Info", "Warning", '
                                         '"Error", "Critical"'),
    (lambda d: d.pop("BackendConfig"), "BackendConfig: missing (required)"),
    (_set("M.quantization", "int3"),
     f'{MODEL}.quantization: "int3" is not one of "w8a16", "int8", "w8", "w4a16", "int4", "w4", "gguf", "none", '
     f'"float", "off"'),
    (_set("M.quant_act_bits", 4), f"{MODEL}.quant_act_bits: 4 is not one of 8, 16"),
]


@pytest.mark.parametrize("mutate,line", INVALID, ids=[line.split(":")[0] + f"#{i}" for i, (_, line) in
                                                     enumerate(INVALID)])
def test_invalid_config_is_refused_with_one_line(mutate, line):
    d = minimal()
    mutate(d)
    with pytest.raises(ConfigError) as e:
        validate_config(d, env={})
    assert e.value.lines == [line]


def test_several_errors_give_several_lines():
    d = minimal()
    d["ServerConfig"] = {"port": 1, "metricsPort": 2}
    with pytest.raises(ConfigError) as e:
        validate_config(d, env={})
    assert e.value.lines == ["ServerConfig.port: 1 is not in [1024, 65535]",
                             "ServerConfig.metricsPort: 2 is not in [1024, 65535]"]


# -- accepted variations -----------------------------------------------------------------------------------------
def test_unknown_keys_warn_and_model_extras_are_accepted_unused():
    d = minimal()
    d["Surprise"] = 1
    d["ServerConfig"] = {"fancy": True}
    d["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0].update(async_scheduler_wait_time=120,
                                                                      models={"qwen2": {"odd": 1}})
    cfg, warn, debug = validate_config(d, env={})
    assert set(warn) == {"Surprise: unknown key, ignored", "ServerConfig.fancy: unknown key, ignored",
                         f"{MODEL}.models.qwen2.odd: unknown key, ignored"}
    assert debug == [f"{MODEL}.async_scheduler_wait_time: accepted, not used"]


def test_a_typo_inside_model_config_warns_with_the_closest_key():
    d = minimal()
    d["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0].update(npuMemSzie=8, quantisation="w8a16",
                                                                      worldsize=2, quant_act_bits=16)
    d["ServerConfig"] = {"maxLinkNumber": 5}
    _, warn, debug = validate_config(d, env={})
    assert set(warn) == {
        f"{MODEL}.npuMemSzie: unknown key (did you mean 'npuMemSize'?), accepted, not used",
        f"{MODEL}.quantisation: unknown key (did you mean 'quantization'?), accepted, not used",
        f"{MODEL}.worldsize: unknown key (did you mean 'worldSize'?), accepted, not used",
        "ServerConfig.maxLinkNumber: unknown key, ignored (did you mean 'maxLinkNum'?)"}
    assert debug == []      # quant_act_bits is a field of ModelConfig: validated, no line


def test_top_level_model_deploy_config_is_accepted():
    d = {"ModelDeployConfig": minimal()["BackendConfig"]["ModelDeployConfig"],
         "BackendConfig": {"npuDeviceIds": [[0]]}}
    assert valid(d).model.modelName == "m"
    d2 = {"ModelDeployConfig": minimal()["BackendConfig"]["ModelDeployConfig"]}
    assert valid(d2).model.modelName == "m"


def test_model_deploy_config_in_both_places_is_refused():
    d = minimal()
    d["ModelDeployConfig"] = copy.deepcopy(d["BackendConfig"]["ModelDeployConfig"])
    with pytest.raises(ConfigError) as e:
        validate_config(d, env={})
    assert e.value.lines == ["ModelDeployConfig: given both at the top level and in BackendConfig: keep one"]


@pytest.mark.parametrize("value,expected", [(False, 0), (0, 0), (True, -1), (-1, -1), (1, 1)])
def test_truncation_values(value, expected):
    d = minimal()
    d["BackendConfig"]["ModelDeployConfig"]["truncation"] = value
    assert valid(d).deploy.truncation == expected


@pytest.mark.parametrize("key", ["deepseek_v3", "deepseek_v2", "deepseekv3", "deepseekv2"])
def test_deepseek_model_keys_are_one(key):
    d = minimal()
    d["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]["models"] = {
        key: {"tool_call_options": {"tool_call_parser": "deepseek_v31"}, "enable_reasoning": True}}
    m = valid(d).model
    for mt in ("deepseek_v3", "deepseek_v2", "deepseekv3", "deepseekv2"):
        o = m.options_for(mt)
        assert o.tool_call_options.tool_call_parser == "deepseek_v31" and o.enable_reasoning
    q = m.options_for("qwen2")
    assert q.tool_call_options.tool_call_parser == "" and q.tool_call_options.lenient_recovery and not q.enable_reasoning


def test_plugin_params_string_or_object():
    d = minimal()
    d["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]["plugin_params"] = '{"plugin_type":"prefix_cache"}'
    assert valid(d).model.plugin_params == {"plugin_type": "prefix_cache"}


def test_env_overrides_addresses():
    cfg, _, _ = validate_config(minimal(), env={"MIES_CONTAINER_IP": "10.0.0.5"})
    assert cfg.ServerConfig.ipAddress == "10.0.0.5" and cfg.ServerConfig.managementIpAddress == "10.0.0.5"
    cfg, _, _ = validate_config(minimal(), env={"MIES_CONTAINER_IP": "10.0.0.5",
                                                "MIES_CONTAINER_MANAGEMENT_IP": "10.0.0.6"})
    assert cfg.ServerConfig.managementIpAddress == "10.0.0.6"


def test_all_zero_address_allowed_when_asked():
    d = minimal()
    d["ServerConfig"] = {"ipAddress": "0.0.0.0", "allowAllZeroIpListening": True}
    assert valid(d).ServerConfig.ipAddress == "0.0.0.0"


def test_unsupported_features_warn():
    d = minimal()
    d["ServerConfig"] = {"distDPServerEnabled": True}
    _, warn, _ = validate_config(d, env={})
    assert any(w.startswith("ServerConfig.distDPServerEnabled") for w in warn)


# -- files and paths -----------------------------------------------------------------------------------------------
def test_config_path_resolution_order(tmp_path):
    home = tmp_path / "home"
    (home / "conf").mkdir(parents=True)
    (home / "conf" / "config.json").write_text("{}")
    env = {"MINDIE_LLM_HOME_PATH": str(home)}
    assert find_config_path(None, env) == (home / "conf" / "config.json").resolve()
    assert find_config_path(None, {**env, "MIES_CONFIG_JSON_PATH": "/x/y.json"}) == Path("/x/y.json")
    assert find_config_path("/a/b.json", {**env, "MIES_CONFIG_JSON_PATH": "/x/y.json"}) == Path("/a/b.json")
    assert find_config_path(None, {}) == INSTALL_ROOT / "conf" / "config.json"
    assert home_dir(Path("/opt/svc/conf/config.json"), {}) == Path("/opt/svc")
    assert home_dir(Path("/opt/svc/conf/config.json"), env) == home.resolve()


def test_relative_paths_cannot_climb_out_of_home(tmp_path):
    assert resolve_path(tmp_path, "security/ca.pem", "k") == tmp_path.resolve() / "security/ca.pem"
    assert resolve_path(tmp_path, "/etc/ssl/ca.pem", "k") == Path("/etc/ssl/ca.pem")
    with pytest.raises(ConfigError) as e:
        resolve_path(tmp_path, "../../etc/passwd", "ServerConfig.tlsCert")
    assert e.value.lines[0].startswith('ServerConfig.tlsCert: "../../etc/passwd" climbs out of the home directory')


def _write(tmp_path, data, mode=0o640) -> Path:
    (tmp_path / "conf").mkdir(exist_ok=True)
    p = tmp_path / "conf" / "config.json"
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    os.chmod(p, mode)
    return p


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path / "nope.json"), env={})
    assert e.value.lines[0].endswith("nope.json: file not found")
    p = _write(tmp_path, '{"ServerConfig": {,}')
    with pytest.raises(ConfigError) as e:
        load_config(str(p), env={})
    assert "not valid JSON (line 1 column" in e.value.lines[0]
    big = _write(tmp_path, " " * (10 * 1024 * 1024 + 1))
    with pytest.raises(ConfigError) as e:
        load_config(str(big), env={})
    assert "more than the 10 MB limit" in e.value.lines[0]


def test_load_config_checks_the_model_folder_and_permissions(tmp_path):
    d = minimal()
    p = _write(tmp_path, d, mode=0o666)
    with pytest.raises(ConfigError) as e:
        load_config(str(p), env={})
    assert e.value.lines == [f"{MODEL}.modelWeightPath: {tmp_path.resolve() / 'w'} does not exist"]
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text("{}")
    loaded = load_config(str(p), env={})          # loose permissions: a warning
    assert any("group or others may write it" in w for w in loaded.warnings)
    assert loaded.home == tmp_path.resolve() and loaded.model_path == tmp_path.resolve() / "w"
    with pytest.raises(ConfigError):
        load_config(str(p), env={}, strict_permissions=True)


def test_missing_chat_template_is_refused(tmp_path):
    d = minimal()
    d["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]["models"] = {"qwen2": {"chat_template": "t.jinja"}}
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text("{}")
    p = _write(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_config(str(p), env={})
    assert e.value.lines == [f"{MODEL}.models.qwen2.chat_template: {tmp_path.resolve() / 't.jinja'} is not a "
                             f"readable file"]


def test_engine_config_mapping(tmp_path, monkeypatch):
    monkeypatch.delenv("MINDIE_LIKE_CACHE_DIR", raising=False)
    d = minimal()
    m = d["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]
    m.update(worldSize=2, npuMemSize=3, cpuMemSize=0, trustRemoteCode=True, dtype="bfloat16", quantization="int4",
             quant_dense="never", tpHeartbeatTimeout=4)
    d["BackendConfig"]["ScheduleConfig"] = {"cacheBlockSize": 16, "templateType": "Mix", "maxPrefillTokens": 512,
                                            "enablePrefixCache": False, "maxIterTimes": 64}
    d["BackendConfig"]["npuDeviceIds"] = [[2, 3]]
    d["BackendConfig"]["ModelDeployConfig"]["truncation"] = True
    cfg, _, _ = validate_config(d, env={})
    ec = to_engine_config(LoadedConfig(config=cfg, path=tmp_path / "c.json", home=tmp_path))
    assert ec.model_path == str(tmp_path.resolve() / "w") and ec.model_name == "m"
    assert (ec.world_size, ec.device_ids, ec.block_size, ec.kv_cache_gb, ec.swap_gb) == (2, [2, 3], 16, 3.0, 0.0)
    assert ec.chunked_prefill and not ec.enable_prefix_cache and ec.truncation == -1 and ec.max_iter_times == 64
    assert ec.trust_remote_code and ec.dtype == "bfloat16" and ec.max_prefill_tokens == 512
    assert (ec.quant.scheme, ec.quant.dense, ec.quant.group_size, ec.tp_heartbeat_timeout) == ("int4", "never", 32, 4.0)
    assert ec.cache_dir == str(Path.home() / ".cache" / "mindie_like") and not ec.multi_nodes
