"""YAML config with CLI overrides, timm style.

A config is a nested dict. The YAML file gives the defaults; every key is also reachable from the
command line as `--set section.key=value` (the value parsed as YAML) and scripts map their named flags
onto keys the same way. A key that the defaults do not define is an error naming the key, so a typo
never silently does nothing. The resolved config is saved beside the results.
"""
import copy
import math
import shlex
from pathlib import Path

import yaml

from common.errors import InputError


def load_yaml(path):
    """Read a YAML mapping, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} not found; pass --config with an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise InputError(f"config file {path} is not valid YAML{where}; fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def merge_checked(base, update, source, prefix="", defaults=None):
    """Return `base` updated with `update`; keys absent from `base` raise an InputError, and each value
    must have the type of the key in `defaults` (the defaults YAML; `base` itself when not given)."""
    merged, defaults = copy.deepcopy(base), base if defaults is None else defaults
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in merged:
            known = ", ".join(sorted(f"{prefix}{k}" for k in merged))
            raise InputError(f"unknown config key '{dotted}' in {source}; known keys here: {known}")
        if isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = merge_checked(merged[key], value, source, f"{dotted}.", defaults[key])
        elif isinstance(merged[key], dict):
            raise InputError(f"config key '{dotted}' in {source} is a section; give it a mapping")
        else:
            merged[key] = checked_value(dotted, defaults[key], value, source)
    return merged


KIND_NAMES = {bool: "true/false", int: "whole number", float: "finite number", str: "string", list: "list"}
NULLABLE_KEYS = {"data.known_negative_share"}  # keys with a value by default that also take null (their other mode)


def _kind(value):
    """The type a config value must keep: bool, int, float (ints accepted), str or list."""
    for kind in (bool, int, float, str, list):
        if isinstance(value, kind):
            return kind
    return None


def _fits(kind, value):
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def checked_value(dotted, default, value, source):
    """`value` for key `dotted` if it has the type of the key's `default` (null defaults take anything,
    NULLABLE_KEYS also null, a string is a one-item list where the default is a list of strings); else a
    one-line InputError."""
    kind = _kind(default)
    if kind is None or value is None and (default is None or dotted in NULLABLE_KEYS):
        return value
    if kind is list and isinstance(value, str) and all(isinstance(item, str) for item in default):
        value = [value]
    items = default if kind is list and default else None
    item_kind = {int: float}.get(_kind(items[0]), _kind(items[0])) if items else None  # [1, 4] takes [0.2, 0.8]
    if _fits(kind, value) and (item_kind is None or all(_fits(item_kind, item) for item in value)):
        return value
    wanted = f"a list of {KIND_NAMES[item_kind]}s" if item_kind else f"a {KIND_NAMES[kind]}"
    raise InputError(f"config key '{dotted}' in {source} must be {wanted} like {default!r}, not {value!r}")


def parse_overrides(items):
    """Turn ['a.b=1', 'c=[1, 4]'] into a nested dict, values parsed as YAML."""
    nested = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        node = nested
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return nested


def override_item(dotted, value):
    """The --set item that parse_overrides reads back as {dotted: value}, quoted for a shell where needed."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("...\n").strip()
    return shlex.quote(f"{dotted}={text}")


def get_dotted(nested, dotted, missing=None):
    """nested['a']['b'] for dotted 'a.b', or `missing` where a section or the key is absent."""
    for part in dotted.split("."):
        if not isinstance(nested, dict) or part not in nested:
            return missing
        nested = nested[part]
    return nested


def set_dotted(nested, dotted, value):
    """Set nested['a']['b'] = value for dotted 'a.b', creating sections as needed."""
    node = nested
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def resolve_config(defaults_path, user_path=None, flag_values=None, overrides=None):
    """defaults YAML <- user YAML <- named CLI flags (dotted keys, None = not given) <- --set items."""
    config = defaults = load_yaml(defaults_path)
    if user_path is not None and Path(user_path).resolve() != Path(defaults_path).resolve():
        config = merge_checked(config, load_yaml(user_path), str(user_path), defaults=defaults)
    flags = {}
    for dotted, value in (flag_values or {}).items():
        if value is not None:
            set_dotted(flags, dotted, value)
    config = merge_checked(config, flags, "command-line flags", defaults=defaults)
    return merge_checked(config, parse_overrides(overrides), "--set overrides", defaults=defaults)


def save_config(config, path):
    from common.files import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


def diff_keys(old, new, prefix=""):
    """Dotted keys whose values differ between two nested dicts."""
    keys = sorted(set(old) | set(new))
    differing = []
    for key in keys:
        dotted = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differing += diff_keys(a, b, prefix=f"{dotted}.")
        elif a != b:
            differing.append(dotted)
    return differing
