"""Pydantic v2 models of the MindIE config file (conf/config.json).

Field names are the config keys, spelled as MindIE spells them. Every range check raises a ValueError whose text
is the second half of the one-line refusal (`ServerConfig.port: 80 is not in [1024, 65535]`); loader.py puts the
key path in front. Unknown keys are kept (`extra="allow"`) so the loader can warn about them instead of failing.
"""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Annotated, Any, Literal, Optional

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt,
                      StrictStr, field_validator, model_validator)

INT32_MAX = 2**31 - 1


def _show(v: Any) -> str:
    try:
        return json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(v)


def in_range(lo: float, hi: float):
    """AfterValidator: `v is not in [lo, hi]`."""
    def check(v):
        if not (lo <= v <= hi):
            raise ValueError(f"{_show(v)} is not in [{lo}, {hi}]")
        return v
    return AfterValidator(check)


def one_of(*allowed):
    def check(v):
        if v not in allowed:
            raise ValueError(f"{_show(v)} is not one of {', '.join(_show(a) for a in allowed)}")
        return v
    return AfterValidator(check)


def one_of_ci(*allowed: str):
    """Case-insensitive choice; normalized to the spelling in `allowed`."""
    low = {a.lower(): a for a in allowed}

    def check(v):
        if v.lower() not in low:
            raise ValueError(f"{_show(v)} is not one of {', '.join(_show(a) for a in allowed)}")
        return low[v.lower()]
    return AfterValidator(check)


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{_show(v)} is not a number")
    return v


Number = Annotated[Any, BeforeValidator(_number)]
Port = Annotated[StrictInt, in_range(1024, 65535)]
PathList = list[StrictStr]


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", validate_default=False, populate_by_name=True,
                              protected_namespaces=())


def _check_ip(v: str) -> str:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"{_show(v)} is not an IPv4 or IPv6 address") from None
    return v


IpAddress = Annotated[StrictStr, AfterValidator(_check_ip)]


class ServerSection(_Section):
    ipAddress: IpAddress = "127.0.0.1"
    managementIpAddress: Optional[IpAddress] = None          # None: = ipAddress
    port: Port = 1025
    managementPort: Port = 1026
    metricsPort: Port = 1027
    allowAllZeroIpListening: StrictBool = False
    maxLinkNum: Annotated[StrictInt, in_range(1, 4096)] = 1000
    httpsEnabled: StrictBool = True
    fullTextEnabled: StrictBool = False
    # business plane TLS
    tlsCaPath: StrictStr = "security/ca/"
    tlsCaFile: PathList = ["ca.pem"]
    tlsCert: StrictStr = "security/certs/server.pem"
    tlsPk: StrictStr = "security/keys/server.key.pem"
    tlsPkPwd: StrictStr = "security/pass/key_pwd.txt"
    tlsCrlPath: StrictStr = "security/certs/"
    tlsCrlFiles: PathList = ["server_crl.pem"]
    # management plane TLS (CA files are looked up under managementTlsCaPath, default tlsCaPath)
    managementTlsCaPath: Optional[StrictStr] = None
    managementTlsCaFile: PathList = ["management_ca.pem"]
    managementTlsCert: StrictStr = "security/certs/management/server.pem"
    managementTlsPk: StrictStr = "security/keys/management/server.key.pem"
    managementTlsPkPwd: StrictStr = "security/pass/management/key_pwd.txt"
    managementTlsCrlPath: StrictStr = "security/management/certs/"
    managementTlsCrlFiles: PathList = ["server_crl.pem"]
    # metrics plane TLS
    metricsTlsCaPath: Optional[StrictStr] = None
    metricsTlsCaFile: PathList = ["metrics_ca.pem"]
    metricsTlsCert: StrictStr = "security/certs/metrics/server.pem"
    metricsTlsPk: StrictStr = "security/keys/metrics/server.key.pem"
    metricsTlsPkPwd: StrictStr = "security/pass/metrics/key_pwd.txt"
    metricsTlsCrlPath: StrictStr = "security/metrics/certs/"
    metricsTlsCrlFiles: PathList = ["server_crl.pem"]
    tlsMinVersion: Annotated[StrictStr, one_of("1.2", "1.3")] = "1.2"     # ours: MindIE allows 1.3 only
    kmcKsfMaster: StrictStr = "tools/pmt/master/ksfa"
    kmcKsfStandby: StrictStr = "tools/pmt/standby/ksfb"
    inferMode: Annotated[StrictStr, one_of("standard", "dmi")] = "standard"
    interCommTLSEnabled: StrictBool = True
    interCommPort: Port = 1121
    interCommTlsCaPath: StrictStr = "security/grpc/ca/"
    interCommTlsCaFiles: PathList = ["ca.pem"]
    interCommTlsCert: StrictStr = "security/grpc/certs/server.pem"
    interCommPk: StrictStr = "security/grpc/keys/server.key.pem"
    interCommPkPwd: StrictStr = "security/grpc/pass/key_pwd.txt"
    interCommTlsCrlPath: StrictStr = "security/grpc/certs/"
    interCommTlsCrlFiles: PathList = ["server_crl.pem"]
    openAiSupport: StrictStr = "vllm"
    tokenTimeout: Annotated[StrictInt, in_range(1, 3600)] = 600
    e2eTimeout: Annotated[StrictInt, in_range(1, 65535)] = 600
    distDPServerEnabled: StrictBool = False
    maxRequestLength: Annotated[StrictInt, in_range(1, 100)] = 40
    maxJsonDepth: Annotated[StrictInt, in_range(10, 100)] = 10
    HealthCheckConfig: dict[str, Any] = Field(default_factory=dict)
    shutdownGracePeriod: Annotated[Number, in_range(0, 3600)] = 10    # ours: seconds in-flight requests get
    # ours: seconds a client gets to send a request's headers (counted from the connection or the previous answer;
    # also how long an idle keep-alive connection stays open) and, separately, its whole body: slowloris bound
    requestReadTimeout: Annotated[StrictInt, in_range(1, 3600)] = 60
    # ours: how many /v1/responses answers are kept in memory for GET/DELETE and previous_response_id (0: none)
    responsesStoreSize: Annotated[StrictInt, in_range(0, 1000000)] = 1000

    @model_validator(mode="after")
    def _ips(self):
        if self.managementIpAddress is None:
            self.managementIpAddress = self.ipAddress
        if not self.allowAllZeroIpListening:
            for key in ("ipAddress", "managementIpAddress"):
                v = getattr(self, key)
                if ipaddress.ip_address(v).is_unspecified:
                    raise ValueError(f"@{key}: {v} listens on every interface; set "
                                     f"ServerConfig.allowAllZeroIpListening to true to allow it")
        return self

    def plane_tls(self, plane: str) -> dict[str, Any]:
        """The TLS key set of one plane ("business" | "management" | "metrics"), unprefixed."""
        if plane == "business":
            p, ca_path = "tls", self.tlsCaPath
            return dict(caPath=ca_path, caFile=self.tlsCaFile, cert=self.tlsCert, pk=self.tlsPk,
                        pkPwd=self.tlsPkPwd, crlPath=self.tlsCrlPath, crlFiles=self.tlsCrlFiles, prefix=p)
        p = plane + "Tls"
        return dict(caPath=getattr(self, p + "CaPath") or self.tlsCaPath, caFile=getattr(self, p + "CaFile"),
                    cert=getattr(self, p + "Cert"), pk=getattr(self, p + "Pk"), pkPwd=getattr(self, p + "PkPwd"),
                    crlPath=getattr(self, p + "CrlPath"), crlFiles=getattr(self, p + "CrlFiles"), prefix=p)


def _truncation(v):
    # false/0: reject; true/-1: keep the tail; 1: keep the head.  (bool first: True == 1 in Python)
    if isinstance(v, bool):
        return -1 if v else 0
    if isinstance(v, int) and v in (-1, 0, 1):
        return v
    raise ValueError(f"{_show(v)} is not one of false, true, 0, -1, 1")


DEEPSEEK_ALIASES = ("deepseek_v3", "deepseek_v2", "deepseekv3", "deepseekv2")


def normalize_model_type(model_type: str) -> str:
    """MindIE renames the DeepSeek V2/V3 keys of `models` to `deepseekv2`: treat all four as one."""
    return "deepseekv2" if model_type in DEEPSEEK_ALIASES else model_type


class ToolCallOptions(_Section):
    tool_call_parser: StrictStr = ""
    lenient_recovery: StrictBool = True     # ours (spec §6)
    strict: StrictBool = False              # ours: tools without their own "strict" are strict (grammar in auto)


class ModelTypeOptions(_Section):
    tool_call_options: ToolCallOptions = Field(default_factory=ToolCallOptions)
    chat_template: StrictStr = ""
    enable_reasoning: StrictBool = False


def _plugin_params(v):
    if v is None or v == "":
        return {}
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError as e:
            raise ValueError(f"{_show(v)} is not a JSON object ({e})") from None
    if not isinstance(v, dict):
        raise ValueError(f"{_show(v)} is not a JSON object")
    return v


_MODEL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,256}$")


def _model_name(v: str) -> str:
    if not _MODEL_NAME.match(v):
        raise ValueError(f"{_show(v)} must be 1..256 characters of [A-Za-z0-9._-]")
    return v


def _positive_or_minus_one(v):
    if v == -1 or v > 0:
        return v
    raise ValueError(f"{_show(v)} must be -1 (a fraction of the free device memory) or > 0")


class ModelEntry(_Section):
    """One entry of ModelDeployConfig.ModelConfig. Unknown keys are passed to the backend (EngineConfig.extra)."""
    modelInstanceType: Annotated[StrictStr, one_of("Standard", "StandardMock")] = "Standard"
    modelName: Annotated[StrictStr, AfterValidator(_model_name)]
    modelWeightPath: Annotated[StrictStr, Field(min_length=1)]
    worldSize: Annotated[StrictInt, in_range(1, 64)] = 1
    npuMemSize: Annotated[Number, AfterValidator(_positive_or_minus_one)] = -1
    cpuMemSize: Annotated[Number, in_range(0, 4096)] = 5
    backendType: Annotated[StrictStr, one_of("atb", "torch")] = "atb"
    trustRemoteCode: StrictBool = False
    plugin_params: Annotated[Any, AfterValidator(_plugin_params)] = Field(default_factory=dict)
    models: dict[str, ModelTypeOptions] = Field(default_factory=dict)
    # ours
    dtype: Annotated[StrictStr, one_of("auto", "float32", "bfloat16", "float16")] = "auto"
    device: Annotated[StrictStr, one_of("auto", "npu", "cuda", "cpu")] = "auto"
    numThreads: Annotated[StrictInt, in_range(0, 1024)] = 0
    tpCollectiveTimeout: Annotated[Number, in_range(5, 3600)] = 120   # seconds a tensor-parallel collective waits
    tpHeartbeatTimeout: Annotated[Number, in_range(1, 600)] = 10      # seconds of silence that mark a rank hung
    # MindIE's MoE parallel split: experts over moe_ep slots, each expert's intermediate dimension over moe_tp
    # ranks; moe_ep x moe_tp = the world (checked at start, where the node count is known)
    moe_ep: Optional[Annotated[StrictInt, in_range(1, 4096)]] = None
    moe_tp: Optional[Annotated[StrictInt, in_range(1, 4096)]] = None

    @field_validator("models", mode="before")
    @classmethod
    def _alias_models(cls, v):
        if not isinstance(v, dict):
            return v
        out: dict = {}
        seen: dict = {}
        for k, opts in v.items():
            nk = normalize_model_type(k)
            if nk in out:
                raise ValueError(f"{_show(seen[nk])} and {_show(k)} are the same model type ({nk}): keep one")
            out[nk], seen[nk] = opts, k
        return out

    def options_for(self, model_type: str) -> ModelTypeOptions:
        """The `models.<model_type>` block for the weights' model_type (defaults when absent)."""
        return self.models.get(normalize_model_type(model_type)) or ModelTypeOptions()


class ModelDeploySection(_Section):
    maxSeqLen: Annotated[StrictInt, in_range(1, INT32_MAX)] = 2560
    maxInputTokenLen: Annotated[StrictInt, in_range(1, INT32_MAX)] = 2048
    truncation: Annotated[Any, AfterValidator(_truncation)] = 0
    ModelConfig: Annotated[list[ModelEntry], Field(min_length=1, max_length=1)]

    @model_validator(mode="after")
    def _lens(self):
        if self.maxInputTokenLen > self.maxSeqLen:
            raise ValueError(f"@maxInputTokenLen: {self.maxInputTokenLen} is greater than maxSeqLen "
                             f"({self.maxSeqLen})")
        return self


def _power_of_two(v: int) -> int:
    if v & (v - 1):
        raise ValueError(f"{v} is not a power of two")
    return v


class ScheduleSection(_Section):
    templateType: Annotated[StrictStr, one_of("Standard", "Mix")] = "Standard"
    templateName: StrictStr = "Standard_LLM"
    cacheBlockSize: Annotated[StrictInt, in_range(1, 128), AfterValidator(_power_of_two)] = 128
    maxPrefillBatchSize: Annotated[StrictInt, in_range(1, 5000)] = 50
    maxPrefillTokens: Annotated[StrictInt, in_range(1, INT32_MAX)] = 8192
    prefillTimeMsPerReq: Annotated[StrictInt, in_range(0, 1000)] = 150
    prefillPolicyType: Annotated[StrictInt, one_of(0, 1, 3)] = 0
    decodeTimeMsPerReq: Annotated[StrictInt, in_range(0, 1000)] = 50
    decodePolicyType: Annotated[StrictInt, one_of(0, 1, 3)] = 0
    maxBatchSize: Annotated[StrictInt, in_range(1, 5000)] = 200
    maxIterTimes: Annotated[StrictInt, in_range(1, INT32_MAX)] = 512
    maxPreemptCount: Annotated[StrictInt, in_range(0, 5000)] = 0
    supportSelectBatch: StrictBool = False
    maxQueueDelayMicroseconds: Annotated[StrictInt, in_range(500, 1000000)] = 5000
    maxFirstTokenWaitTime: Annotated[StrictInt, in_range(0, 3600000)] = 2500
    enablePrefixCache: Optional[StrictBool] = None     # ours: prefix caching is on unless this is false
    maxQueueSize: Annotated[StrictInt, in_range(0, 1000000)] = 0   # ours: 0 = unbounded waiting queue

    @model_validator(mode="after")
    def _batches(self):
        if self.maxPrefillBatchSize > self.maxBatchSize:
            raise ValueError(f"@maxPrefillBatchSize: {self.maxPrefillBatchSize} is greater than maxBatchSize "
                             f"({self.maxBatchSize})")
        return self


class BackendSection(_Section):
    backendName: StrictStr = "mindieservice_llm_engine"
    modelInstanceNumber: Annotated[StrictInt, in_range(1, 10)] = 1
    npuDeviceIds: Optional[list[list[Annotated[StrictInt, in_range(0, 1023)]]]] = None
    tokenizerProcessNumber: Annotated[StrictInt, in_range(1, 32)] = 8
    multiNodesInferEnabled: StrictBool = False
    multiNodesInferPort: Port = 1120
    interNodeTLSEnabled: StrictBool = True
    interNodeTlsCaPath: StrictStr = "security/grpc/ca/"
    interNodeTlsCaFiles: PathList = ["ca.pem"]
    interNodeTlsCert: StrictStr = "security/grpc/certs/server.pem"
    interNodeTlsPk: StrictStr = "security/grpc/keys/server.key.pem"
    interNodeTlsPkPwd: StrictStr = "security/grpc/pass/mindie_server_key_pwd.txt"
    interNodeTlsCrlPath: StrictStr = "security/grpc/certs/"
    interNodeTlsCrlFiles: PathList = ["server_crl.pem"]
    interNodeKmcKsfMaster: StrictStr = "tools/pmt/master/ksfa"
    interNodeKmcKsfStandby: StrictStr = "tools/pmt/standby/ksfb"
    ModelDeployConfig: ModelDeploySection
    ScheduleConfig: ScheduleSection = Field(default_factory=ScheduleSection)

    @model_validator(mode="after")
    def _devices(self):
        ws = self.ModelDeployConfig.ModelConfig[0].worldSize
        if self.npuDeviceIds is None:
            self.npuDeviceIds = [list(range(ws)) for _ in range(self.modelInstanceNumber)]
        if len(self.npuDeviceIds) != self.modelInstanceNumber:
            raise ValueError(f"@npuDeviceIds: {len(self.npuDeviceIds)} device lists for modelInstanceNumber "
                             f"{self.modelInstanceNumber}: give one list per instance")
        for ids in self.npuDeviceIds:
            if len(ids) != ws:
                raise ValueError(f"@npuDeviceIds: {_show(ids)} has {len(ids)} devices but worldSize is {ws}")
        sc, md = self.ScheduleConfig, self.ModelDeployConfig
        if sc.templateType == "Standard" and sc.maxPrefillTokens < md.maxInputTokenLen:
            raise ValueError(f"@ScheduleConfig.maxPrefillTokens: {sc.maxPrefillTokens} is less than "
                             f"ModelDeployConfig.maxInputTokenLen ({md.maxInputTokenLen}); raise it or use "
                             f"templateType \"Mix\" (chunked prefill)")
        return self


def _log_level(v):
    aliases = {"warn": "Warning"}
    if isinstance(v, str) and v.lower() in aliases:
        return aliases[v.lower()]
    return v


class LogSection(_Section):
    logLevel: Annotated[StrictStr, BeforeValidator(_log_level),
                        one_of_ci("Debug", "Info", "Warning", "Error", "Critical")] = "Info"
    logFileSize: Annotated[StrictInt, in_range(1, 500)] = 20
    logFileNum: Annotated[StrictInt, in_range(1, 64)] = 20
    logPath: StrictStr = "logs/mindie-server.log"


class MindIEConfig(_Section):
    Version: StrictStr = "1.0.0"
    ServerConfig: ServerSection = Field(default_factory=ServerSection)
    BackendConfig: BackendSection
    LogConfig: LogSection = Field(default_factory=LogSection)

    # -- convenience accessors -----------------------------------------------------------------------------
    @property
    def model(self) -> ModelEntry:
        return self.BackendConfig.ModelDeployConfig.ModelConfig[0]

    @property
    def deploy(self) -> ModelDeploySection:
        return self.BackendConfig.ModelDeployConfig

    @property
    def schedule(self) -> ScheduleSection:
        return self.BackendConfig.ScheduleConfig

    @property
    def server(self) -> ServerSection:
        return self.ServerConfig


# key → (section name) for the ones that may appear at top level in older MindIE files
TOP_LEVEL_MOVABLE = ("ModelDeployConfig", "ScheduleConfig")

# Literal kept importable for type hints elsewhere
PlaneName = Literal["business", "management", "metrics"]
