"""The one policy every request to agent-manager passes, command and remediation alike.

Everything that decides what may reach the cluster is in this module, as data: the tools,
the read verbs and the flags each accepts, the flags refused and why, the remediation
actions with the kinds and params each accepts, and the rules for Kubernetes names. It is
applied three times, always from these tables:

- **when rules load** (``aetherius check``, every reload, the API): :func:`read_refusals` and
  :func:`write_refusals` look at the literal parts of a step (tool, verb, flags, literal
  args and targets) and return each refusal with the field it is about, so ``check`` prints
  ``path:line``;
- **while a step renders its args** (:func:`render_args`): a value that comes from an event
  (a ``{{ incident.* }}`` / ``{{ event.* }}`` placeholder) must be a Kubernetes name or label
  value, and no rendered value may start a flag or be part of a flag's name;
- **right before a request is sent** (:func:`enforce`, called by ``steps/agent.py`` for both
  step types): the fully rendered request, last guard. It raises
  :class:`~engine.exceptions.NotAllowed`; nothing is sent.

A ``command`` step only reads: its request carries no ``dry_run`` flag and its verb must be
a read verb. Changes are ``remediation`` steps only: a known action, a target of the kind
the action acts on, outside the protected namespaces, with the params the action takes,
and a ``dry_run`` flag that is what the record will say. This module does no I/O.

Approvals (later) hang off :class:`Verdict`: it says whether a request writes, what it
acts on, in which namespace, whether it is a dry run, and a digest of the request, which is
what an approval must be bound to.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.exceptions import NotAllowed
from engine.templates import placeholders, render, walk_strings

# ----------------------------------------------------------------------------- names

# Kubernetes' own rules (k8s.io/apimachinery/pkg/util/validation).
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")                        # DNS-1123 label, <= 63
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")  # <= 253
_LABEL_VALUE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")     # label value, <= 63
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9]{0,62}")                             # a kind: Pod, StatefulSet
# A cluster as agent-manager names it (a kubeconfig context, an EKS ARN, a GKE name).
_CLUSTER = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._:/@-]{0,251}[A-Za-z0-9])?")


def is_label(value: str) -> bool:
    """A DNS-1123 label: a namespace, a container."""
    return len(value) <= 63 and _LABEL.fullmatch(value) is not None


def is_subdomain(value: str) -> bool:
    """A DNS-1123 subdomain: the name of a pod, a node, most objects."""
    return len(value) <= 253 and _SUBDOMAIN.fullmatch(value) is not None


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and _LABEL_VALUE.fullmatch(value) is not None


def is_kind(value: str) -> bool:
    return _KIND.fullmatch(value) is not None


def is_cluster(value: str) -> bool:
    return _CLUSTER.fullmatch(value) is not None


def is_event_value(value: str) -> bool:
    """What a value taken from an event may be, wherever it lands: a name or a label value.
    Neither can start with '-', hold a space, '=', '/' or a newline."""
    return is_subdomain(value) or is_label_value(value)


# Which rule each field of a target (and of an incident that names one) follows.
FIELD_RULES = {
    "namespace": (is_label, "a DNS-1123 label"),
    "container": (is_label, "a DNS-1123 label"),
    "name": (is_subdomain, "a DNS-1123 subdomain"),
    "pod": (is_subdomain, "a DNS-1123 subdomain"),
    "node": (is_subdomain, "a DNS-1123 subdomain"),
    "workload": (is_subdomain, "a DNS-1123 subdomain"),
    "uid": (is_label_value, "a UID"),
    "kind": (is_kind, "a kind (letters and digits, e.g. Deployment)"),
    "workload_kind": (is_kind, "a kind (letters and digits, e.g. Deployment)"),
    "cluster": (is_cluster, "a cluster name"),
}
# The incident fields a target is made of: what a manual execute may not set by hand
# unless its role may (``policy.override_roles``).
TARGET_FIELDS = frozenset(FIELD_RULES)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def field_problem(field: str, value: Any) -> str | None:
    """Why ``value`` may not be the target field ``field`` (None: it may). None and '' are unset."""
    if value is None or value == "":
        return None
    rule, what = FIELD_RULES.get(field, (is_event_value, "a Kubernetes name or label value"))
    if not isinstance(value, str) or not rule(value):
        return f"{field} {_show(value)} is not {what}"
    return None


# ----------------------------------------------------------------------------- the table

TOOLS = frozenset({"kubectl"})   # a tool needs a verb and flag table here to be allowed

# Flags of read verbs: name -> takes a value.
FLAGS: dict[str, bool] = {
    "--tail": True, "--previous": False, "-p": False, "--since": True, "--since-time": True,
    "--timestamps": False, "-c": True, "--container": True, "--all-containers": False,
    "--limit-bytes": True, "--prefix": False, "-o": True, "--output": True, "-l": True,
    "--selector": True, "--field-selector": True, "--show-labels": False, "--sort-by": True,
    "-L": True, "--label-columns": True, "--no-headers": False, "--show-kind": False,
    "--ignore-not-found": False, "--chunk-size": True, "--show-events": False, "--containers": False,
    "--for": True, "--types": True, "--recursive": False, "--api-version": True, "--client": False,
    "--namespaced": False, "--api-group": True, "--verbs": True, "--list": False,
    "--subresource": True, "-q": False, "--quiet": False,
    "-n": True, "--namespace": True, "-A": False, "--all-namespaces": False,
}
_NS = ("-n", "--namespace")
_ALL = ("-A", "--all-namespaces")
_OUT = ("-o", "--output")
_SEL = ("-l", "--selector")


@dataclass(frozen=True)
class ReadVerb:
    flags: frozenset[str]
    positional: bool = True        # takes arguments (resource types, names)
    objects: bool = False          # reads objects: a Secret among them is a Secret read


def _verb(*flags: str | tuple[str, ...], positional: bool = True, objects: bool = False) -> ReadVerb:
    names: set[str] = set()
    for flag in flags:
        names.update((flag,) if isinstance(flag, str) else flag)
    return ReadVerb(frozenset(names), positional, objects)


READ_VERBS: dict[str, ReadVerb] = {
    "logs": _verb("--tail", "--previous", "-p", "--since", "--since-time", "--timestamps", "-c",
                  "--container", "--all-containers", "--limit-bytes", "--prefix", _SEL, _NS),
    "get": _verb(_OUT, _SEL, "--field-selector", "--show-labels", "--sort-by", "-L", "--label-columns",
                 "--no-headers", "--show-kind", "--ignore-not-found", "--chunk-size", "--subresource",
                 _NS, _ALL, objects=True),
    "describe": _verb(_SEL, "--show-events", "--chunk-size", _NS, _ALL, objects=True),
    "top": _verb("--containers", _SEL, "--sort-by", "--no-headers", _NS, _ALL),
    "events": _verb("--for", "--types", _OUT, "--no-headers", _NS, _ALL),
    "explain": _verb("--recursive", "--api-version", _OUT),
    "version": _verb(_OUT, "--client", positional=False),
    "api-resources": _verb("--namespaced", "--api-group", "--verbs", _OUT, "--no-headers", "--sort-by",
                           positional=False),
    "api-versions": _verb(positional=False),
    "cluster-info": _verb(positional=False),
    "auth-can-i": _verb("--list", "--subresource", "-q", "--quiet", "--no-headers", _NS, _ALL),
}

# ``-o`` values: printed forms only. Template files and go-templates are refused: the
# first read files on agent-manager's host, and a jsonpath says the same as the second.
OUTPUTS = frozenset({"json", "yaml", "wide", "name", "plaintext", "plaintext-openapiv2"})
OUTPUT_PREFIXES = ("jsonpath=", "jsonpath-as-json=", "custom-columns=")

_IDENTITY = "changes who kubectl acts as"
_CLUSTER_FLAG = "changes which cluster kubectl talks to, or how it trusts it"
_FILES = "reads or writes files or URLs on agent-manager's host; name the object in the step's target"
# Flags refused whatever the verb, with the reason (any flag not in a verb's list is refused too).
REFUSED_FLAGS: dict[str, str] = {
    **dict.fromkeys(("--as", "--as-group", "--as-uid", "--token", "--user", "--username", "--password",
                     "--client-certificate", "--client-key"), _IDENTITY),
    **dict.fromkeys(("--kubeconfig", "--context", "--cluster", "--server", "-s", "--certificate-authority",
                     "--insecure-skip-tls-verify", "--tls-server-name"), _CLUSTER_FLAG),
    "--raw": "sends a raw API request past the verb's rules",
    **dict.fromkeys(("-f", "--filename", "-k", "--kustomize", "-R", "--template", "--output-directory",
                     "--cache-dir", "--log-file", "--profile-output"), _FILES),
    **dict.fromkeys(("-w", "--watch", "--watch-only", "--follow"), "never ends"),
    "--": "ends kubectl's flags; not needed",
    "-": "reads standard input; not needed",
}

# Verbs that change the cluster: only through a remediation step. Others that are not reads
# are refused as well: they run code in a container, move files, open tunnels or show
# credentials (exec, cp, attach, port-forward, proxy, debug, config, plugin, ...).
WRITE_VERBS = frozenset({
    "apply", "create", "delete", "edit", "patch", "replace", "scale", "rollout", "set", "label",
    "annotate", "taint", "cordon", "uncordon", "drain", "autoscale", "expose", "run", "certificate"})

SECRETS = frozenset({"secret", "secrets"})
PROTECTED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})

_WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})
_NUMBERS = frozenset({"factor", "memory_mib", "current_memory_mib", "max_memory_mib", "replicas",
                      "current_replicas"})
_TARGET_PARAMS = {"name": "name", "pod": "name", "node": "name", "container": "container", "kind": "kind"}


@dataclass(frozen=True)
class WriteAction:
    kinds: frozenset[str]          # the kinds of object it acts on
    params: frozenset[str]         # the params it takes
    namespaced: bool = True


WRITE_ACTIONS: dict[str, WriteAction] = {
    "increase_memory": WriteAction(_WORKLOADS, frozenset(
        {"factor", "memory_mib", "current_memory_mib", "max_memory_mib", "name", "kind", "container"})),
    "restart_rollout": WriteAction(_WORKLOADS, frozenset({"name", "kind", "container"})),
    "scale": WriteAction(frozenset({"Deployment", "StatefulSet", "ReplicaSet"}),
                         frozenset({"replicas", "current_replicas", "name", "kind", "container"})),
    "delete_pod": WriteAction(frozenset({"Pod"}), frozenset({"pod"})),
    "cordon_node": WriteAction(frozenset({"Node"}), frozenset({"node"}), namespaced=False),
}
# patch_deployment (the seed's action) applies one of these, named by params.patch or the decision.
PATCHES = frozenset({"increase_memory", "restart_rollout", "scale"})
ACTIONS = frozenset({"patch_deployment", *WRITE_ACTIONS})
ACTION_TYPES = frozenset({"kubectl"})   # a remediation's action_type: the tool it goes through


def action_params(action: str) -> frozenset[str]:
    """The params a remediation step with this ``action`` may give."""
    if action == "patch_deployment":
        return frozenset({"patch"}).union(*(WRITE_ACTIONS[p].params for p in PATCHES))
    rule = WRITE_ACTIONS.get(action)
    return rule.params if rule is not None else frozenset()


@dataclass(frozen=True)
class Policy:
    """What of the policy the service configuration decides (``remediation.allowed_actions``,
    ``policy.allow_secrets``, ``policy.protected_namespaces``); the rest is the table above."""

    allowed_actions: frozenset[str] = ACTIONS
    allow_secrets: bool = False
    protected_namespaces: frozenset[str] = PROTECTED_NAMESPACES


@dataclass(frozen=True)
class Verdict:
    """A request the policy lets through, and what an approval would be decided on."""

    writes: bool
    action: str
    target: Mapping[str, Any]
    namespace: str | None
    dry_run: bool | None        # None for a read: it carries no dry-run flag
    digest: str                 # of the whole request: what an approval is bound to


def request_digest(request: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- args

Loc = tuple[str | int, ...]
Refusal = tuple[Loc, str]


@dataclass(frozen=True)
class Arg:
    """One argument as the policy reads it: its text, or (``known`` False, at load time, for a
    template) the literal text before its first placeholder."""

    text: str
    known: bool = True


@dataclass
class _Parsed:
    flags: list[tuple[str, str | None, int]]          # (flag, value or None if not known, its index)
    positionals: list[tuple[str, int, bool]]          # (text, index, known: else a literal prefix)
    refusals: list[tuple[int, str]]


def _parse(verb: str, rule: ReadVerb, args: list[Arg]) -> _Parsed:
    out = _Parsed([], [], [])

    def allowed(name: str, index: int) -> bool:
        if name in REFUSED_FLAGS:
            out.refusals.append((index, f"flag {name} is refused: {REFUSED_FLAGS[name]}"))
            return False
        if name not in rule.flags:
            names = ", ".join(sorted(rule.flags)) or "none"
            out.refusals.append((index, f"flag {name} is not one kubectl {verb} may take (allowed: {names})"))
            return False
        return True

    i = 0
    while i < len(args):
        arg, text = args[i], args[i].text
        if not text.startswith("-"):
            out.positionals.append((text, i, arg.known))
        elif not arg.known:
            # A template after a literal flag: the flag's name must be whole before '='.
            head, eq, _ = text.partition("=")
            names = [head] if head.startswith("--") else ["-" + c for c in head[1:]]
            if not eq or head in ("-", "--"):
                out.refusals.append((i, "a flag's name cannot come from a template "
                                        "(write --flag={{ ... }}, or the flag and then its value)"))
            elif all(allowed(n, i) for n in names):
                *bools, last = names
                for name in [*bools, last]:
                    wants = FLAGS[name]
                    if wants != (name == last):
                        out.refusals.append((i, f"{name} {'needs a value' if wants else 'takes no value'}"))
                out.flags += [(n, None, i) for n in names]
        elif text in ("-", "--"):
            allowed(text, i)
        elif text.startswith("--"):
            name, eq, given = text.partition("=")
            value: str | None = given
            at = i
            if allowed(name, i):
                if FLAGS[name] and not eq:
                    i, value = _value_after(args, i, out)
                elif not FLAGS[name] and eq and value not in ("true", "false"):
                    out.refusals.append((i, f"{name} takes no value"))
                out.flags.append((name, value, at))
        else:   # shorthand, as pflag reads it: -p, -pc, -oyaml, -o=yaml, -o yaml
            for j in range(1, len(text)):
                name = "-" + text[j]
                if not allowed(name, i):
                    break
                if not FLAGS[name]:
                    out.flags.append((name, None, i))
                    continue
                rest = text[j + 1:]
                if rest:
                    out.flags.append((name, rest.removeprefix("="), i))
                else:
                    at = i
                    i, following = _value_after(args, i, out)
                    out.flags.append((name, following, at))
                break
        i += 1
    return out


def _value_after(args: list[Arg], index: int, out: _Parsed) -> tuple[int, str | None]:
    """The value of the flag at ``index`` in the next argument: (its index, its text or None)."""
    if index + 1 >= len(args):
        out.refusals.append((index, f"{args[index].text} needs a value"))
        return index, None
    following = args[index + 1]
    return index + 1, following.text if following.known else None


def _is_secret(resource: str) -> bool:
    # "secrets", "secret", "Secret", "secrets.v1", "secret/name" (not "secretproviderclasses").
    return resource.split("/", 1)[0].split(".", 1)[0].strip().lower() in SECRETS


def _reads_secrets(positionals: list[tuple[str, int, bool]], kind: Any) -> int | None:
    """The index of the argument that names Secrets (-1: the target's kind), or None."""
    if isinstance(kind, str) and _is_secret(kind):
        return -1
    for n, (text, index, known) in enumerate(positionals):
        # The first argument is a list of types ("pods,secrets"); "type/name" anywhere. Of a
        # template, only the parts before it are known ("secret/{{ incident.name }}").
        parts = text.split(",")
        if not known and "/" not in parts[-1]:
            parts = parts[:-1]
        if (n == 0 or "/" in text) and any(_is_secret(part) for part in parts):
            return index
    return None


def _read_args(verb: str, args: list[Arg], target: Mapping[str, Any], policy: Policy,
               target_namespace_known: bool) -> list[tuple[int, str]]:
    """Refusals of the args of a read verb (index -1: the target). At load time an arg may
    be partly unknown; the namespace of the target may be unknown (it comes from the event)."""
    rule = READ_VERBS[verb]
    parsed = _parse(verb, rule, args)
    refusals = list(parsed.refusals)
    if parsed.positionals and not rule.positional:
        refusals.append((parsed.positionals[0][1], f"kubectl {verb} takes no arguments here"))
    secrets = _reads_secrets(parsed.positionals, target.get("kind")) if rule.objects else None
    if secrets is not None and not policy.allow_secrets:
        refusals.append((secrets, "reading Secrets is refused (policy.allow_secrets is false)"))
    for name, value, index in parsed.flags:
        if name in _NS:
            if value is None:
                continue
            if not target_namespace_known or value != target.get("namespace"):
                refusals.append((index, f"{name} {_show(value)} overrides the target's namespace: "
                                        "set target.namespace instead"))
        elif name in _ALL and secrets is not None:
            refusals.append((index, f"{name} widens a read of Secrets to every namespace"))
        elif name in _OUT and value is not None and value not in OUTPUTS and not value.startswith(
                OUTPUT_PREFIXES):
            refusals.append((index, f"output {_show(value)} is refused (allowed: "
                                    f"{', '.join(sorted(OUTPUTS))}, jsonpath=..., jsonpath-as-json=..., "
                                    "custom-columns=...)"))
    return refusals


def _verb_problem(tool: Any, verb: Any) -> tuple[str, str] | None:
    """(field, why) if a command may not use this tool or verb at all."""
    if tool not in TOOLS:
        return "tool", (f"tool {_show(tool)} is not allowed (allowed: {', '.join(sorted(TOOLS))}, "
                        "by exact name)")
    if verb in WRITE_VERBS:
        return "action", (f"kubectl {verb} changes the cluster: a command step only reads; "
                          "use a remediation step")
    if verb not in READ_VERBS:
        return "action", (f"kubectl {_show(verb)} is not a read verb the policy allows "
                          f"(allowed: {', '.join(sorted(READ_VERBS))})")
    return None


def _target_refusals(target: Mapping[str, Any], literal: Mapping[str, bool] | None = None) -> list[Refusal]:
    out: list[Refusal] = []
    for field, value in target.items():
        if literal is not None and not literal.get(field):
            continue
        problem = field_problem(field, value)
        if problem is not None:
            out.append((("target", field), f"target {problem}"))
    return out


# ----------------------------------------------------------------------------- load time


def _arg_of(template: Any) -> Arg:
    text = str(template)
    if "{{" not in text:
        return Arg(text)
    return Arg(text[:text.index("{{")], known=False)


def _literal(value: Any) -> bool:
    return not (isinstance(value, str) and "{{" in value)


def read_refusals(tool: str, verb: str, args: list[Any], target: Mapping[str, Any] | None,
                  cluster: str | None, policy: Policy) -> list[Refusal]:
    """What the policy refuses in a command step's literal parts, each with its field."""
    problem = _verb_problem(tool, verb)
    if problem is not None:
        return [((problem[0],), problem[1])]
    target = dict(target or {})
    literal = {k: _literal(v) for k, v in target.items()}
    out = _target_refusals(target, literal)
    if cluster is not None and _literal(cluster) and not is_cluster(cluster):
        out.append((("cluster",), f"cluster {_show(cluster)} is not a cluster name"))
    known = {k: v for k, v in target.items() if literal[k]}
    for index, message in _read_args(verb, [_arg_of(a) for a in args], known, policy,
                                     target_namespace_known=bool(known.get("namespace"))):
        out.append((("target", "kind") if index == -1 else ("args", index), message))
    return out


def write_refusals(action_type: str, action: str, params: Mapping[str, Any], policy: Policy) -> list[Refusal]:
    """What the policy refuses in a remediation step's literal parts, each with its field."""
    out: list[Refusal] = []
    if action_type not in ACTION_TYPES:
        out.append((("action_type",), f"action_type {_show(action_type)} is not allowed "
                                      f"(known: {', '.join(sorted(ACTION_TYPES))})"))
    if action not in policy.allowed_actions:
        out.append((("action",), f"remediation action {action!r} is not in remediation.allowed_actions"))
    allowed = action_params(action)
    for key, value in params.items():
        if key not in allowed:
            out.append((("params", key), f"param {key!r} is not one {action} takes "
                                         f"(allowed: {', '.join(sorted(allowed))})"))
        elif _literal(value):
            problem = _param_problem(action, key, value)
            if problem is not None:
                out.append((("params", key), problem))
    return out


def _param_problem(action: str, key: str, value: Any) -> str | None:
    if value is None:
        return None
    if key in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"params.{key} must be a number, got {_show(value)}"
        return None
    if key == "patch":
        return None if value in PATCHES else f"params.patch {_show(value)} is not one of {sorted(PATCHES)}"
    field = _TARGET_PARAMS.get(key)
    if field is not None:
        problem = field_problem(field, value)
        if problem is not None:
            return f"params.{problem}"
        if key == "kind" and action in WRITE_ACTIONS and value not in WRITE_ACTIONS[action].kinds:
            kinds = ", ".join(sorted(WRITE_ACTIONS[action].kinds))
            return f"{action} does not act on a {value} (kinds: {kinds})"
    return None


# ----------------------------------------------------------------------------- render time

_EVENT_ROOTS = frozenset({"incident", "event", "events"})


def _roots(source: str) -> frozenset[str]:
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        return frozenset()
    return frozenset(n.id for n in ast.walk(tree) if isinstance(n, ast.Name))


def render_args(templates: list[Any], names: Mapping[str, Any]) -> list[str]:
    """Render a command's args; refuse (NotAllowed) a value from an event that is not a
    Kubernetes name or label value, and any rendered value that would start a flag or name one."""
    out = []
    for i, template in enumerate(templates):
        text = template if isinstance(template, str) else str(template)
        if "{{" not in text:
            out.append(text)
            continue
        literal = text[:text.index("{{")]
        for source in placeholders(text):
            if _roots(source) & _EVENT_ROOTS:
                value = render("{{ " + source + " }}", names)
                if value is not None and not is_event_value(str(value)):
                    raise NotAllowed(f"args[{i}]: {{{{ {source} }}}} is {_show(value)}, not a Kubernetes "
                                     "name or label value: a value from an event may not reach kubectl")
        rendered = render(text, names)
        rendered = "" if rendered is None else str(rendered)
        if literal.startswith("-"):
            if "=" not in literal:
                raise NotAllowed(f"args[{i}]: a flag's name cannot come from a template")
        elif rendered.startswith("-"):
            raise NotAllowed(f"args[{i}]: the rendered value {_show(rendered)} would become a flag")
        out.append(rendered)
    return out


# ----------------------------------------------------------------------------- send time


def _check_target(request: Mapping[str, Any]) -> Mapping[str, Any]:
    target = request.get("target")
    if not isinstance(target, Mapping):
        raise NotAllowed("the request has no target")
    for _loc, message in _target_refusals(target):
        raise NotAllowed(message)
    cluster = request.get("cluster")
    if cluster is not None and (not isinstance(cluster, str) or not is_cluster(cluster)):
        raise NotAllowed(f"cluster {_show(cluster)} is not a cluster name")
    return target


def enforce(request: Mapping[str, Any], policy: Policy, *, writes: bool,
            execution_dry_run: bool = False) -> Verdict:
    """The last guard, on the fully rendered request: its verdict, or NotAllowed."""
    target = _check_target(request)
    tool, action, args = request.get("tool"), request.get("action"), request.get("args")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise NotAllowed("args must be a list of strings")
    if not writes:
        if "dry_run" in request:
            raise NotAllowed("a read carries no dry_run flag")
        problem = _verb_problem(tool, action)
        if problem is not None:
            raise NotAllowed(problem[1])
        assert isinstance(action, str)
        for index, message in _read_args(action, [Arg(a) for a in args], target, policy,
                                         target_namespace_known=True):
            raise NotAllowed(message if index < 0 else f"args[{index}]: {message}")
        return Verdict(False, action, target, target.get("namespace"), None, request_digest(request))
    if tool not in ACTION_TYPES:
        raise NotAllowed(f"action_type {_show(tool)} is not allowed "
                         f"(known: {', '.join(sorted(ACTION_TYPES))})")
    rule = WRITE_ACTIONS.get(action) if isinstance(action, str) else None
    if rule is None or action not in policy.allowed_actions:
        raise NotAllowed(f"remediation action {_show(action)} is not in remediation.allowed_actions")
    if args:
        raise NotAllowed(f"{action} takes no args")
    dry_run = request.get("dry_run")
    if not isinstance(dry_run, bool):
        raise NotAllowed("a change must say whether it is a dry run (dry_run: true|false)")
    if execution_dry_run and not dry_run:
        raise NotAllowed("this execution is a dry run: a live change may not be sent from it")
    if target.get("kind") not in rule.kinds:
        raise NotAllowed(f"{action} does not act on a {_show(target.get('kind'))} "
                         f"(kinds: {', '.join(sorted(rule.kinds))})")
    if not target.get("name"):
        raise NotAllowed(f"{action}: the incident names no target object")
    namespace = target.get("namespace")
    if rule.namespaced:
        if not namespace:
            raise NotAllowed(f"{action}: the incident names no namespace")
        if namespace in policy.protected_namespaces:
            raise NotAllowed(f"namespace {namespace} is protected (policy.protected_namespaces): "
                             "no remediation runs there")
    elif namespace:
        raise NotAllowed(f"{action} acts on a cluster-wide {target.get('kind')}, not in a namespace")
    params = request.get("params") or {}
    if not isinstance(params, Mapping):
        raise NotAllowed("params must be a mapping")
    for key, value in params.items():
        if key not in rule.params:
            raise NotAllowed(f"param {key!r} is not one {action} takes "
                             f"(allowed: {', '.join(sorted(rule.params))})")
        why = _param_problem(action, key, value)
        if why is not None:
            raise NotAllowed(why)
    return Verdict(True, action, target, namespace, dry_run, request_digest(request))


# ----------------------------------------------------------------------------- manual execute


def _fields_read(source: str) -> set[tuple[str, str | None]]:
    """(root, field) pairs an expression reads from ``incident`` and ``context``; field None:
    it reads the root as a whole (or by a key it computes)."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        return set()
    used: set[int] = set()
    out: set[tuple[str, str | None]] = set()
    for node in ast.walk(tree):
        base = getattr(node, "value", None)
        if isinstance(base, ast.Name) and base.id in ("incident", "context"):
            if isinstance(node, ast.Attribute) and node.attr != "get":
                out.add((base.id, node.attr))
                used.add(id(base))
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(
                    node.slice.value, str):
                out.add((base.id, node.slice.value))
                used.add(id(base))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            owner = node.func.value
            if (isinstance(owner, ast.Name) and owner.id in ("incident", "context") and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                out.add((owner.id, node.args[0].value))
                used.add(id(owner))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in ("incident", "context") and id(node) not in used:
            out.add((node.id, None))
    return out


def overrides(incident: Mapping[str, Any], context: Mapping[str, Any], configs: Iterable[Any]) -> list[str]:
    """The fields of a manual execute's ``incident`` and ``context`` that would reach
    agent-manager through steps with these configs: every target field of the incident (the
    default target is made of them), and whatever their templates read. Sorted, dotted."""
    read: set[tuple[str, str | None]] = set()
    for config in configs:
        for _path, text in walk_strings(config):
            for source in placeholders(text):
                read |= _fields_read(source)
    found = {f"incident.{k}" for k in incident if k in TARGET_FIELDS or ("incident", k) in read
             or ("incident", None) in read}
    found |= {f"context.{k}" for k in context if ("context", k) in read or ("context", None) in read}
    return sorted(found)


def override_problem(field: str, value: Any) -> str | None:
    """Why a manual execute may not set ``field`` (``incident.namespace``) to ``value``."""
    name = field.split(".", 1)[1]
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                         and name not in TARGET_FIELDS):
        return None
    return field_problem(name, value)
