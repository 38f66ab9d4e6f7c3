#!/usr/bin/env python3
"""Vendors the OCSF schema facts confgate's OCSF tests check against (no network at test
time): for the classes and objects confgate emits, each one's attributes and required
attributes (after `extends`) with their dictionary types, its `at_least_one` constraints,
and the enums whose values confgate maps (activity_id, file type_id, severity_id).

Usage: scripts/ocsf-vendor.py SCHEMA_GIT_DIR TAG > monitor/src/event/ocsf/schema-TAG.json
(SCHEMA_GIT_DIR: a clone of github.com/ocsf/ocsf-schema)."""
import json
import subprocess
import sys

repo, tag = sys.argv[1], sys.argv[2]


def show(path):
    out = subprocess.run(["git", "--git-dir", repo, "show", f"{tag}:{path}"],
                         check=True, capture_output=True).stdout
    return json.loads(out)


dictionary = show("dictionary.json")["attributes"]
EVENTS = {"base_event": "events/base_event.json", "system": "events/system/system.json",
          "file_activity": "events/system/file_activity.json"}
OBJECTS = ["object", "_entity", "endpoint", "process_entity", "process", "actor", "session",
           "device", "file", "metadata", "product", "user", "reporter"]


def load(name):
    return show(EVENTS[name]) if name in EVENTS else show(f"objects/{name}.json")


def source(name):
    return EVENTS[name] if name in EVENTS else f"objects/{name}.json"


def flatten(name):
    chain, n = [], name
    while n:
        d = load(n)
        chain.append((n, d))
        n = d.get("extends")
    attrs, at_least_one, sources, profiles = {}, [], [], {}
    for n, d in reversed(chain):
        sources.append(source(n))
        for k, v in d.get("attributes", {}).items():
            if isinstance(v, dict):
                attrs.setdefault(k, {}).update(v)
            elif k == "$include":
                for inc in v:
                    prof = show(inc)
                    if prof.get("meta") == "profile":
                        profiles[prof["name"]] = {"source": inc, "attributes": sorted(prof["attributes"])}
        c = (d.get("constraints") or {}).get("at_least_one")
        if c:
            at_least_one.append(c)
    required = {}
    for k, v in sorted(attrs.items()):
        if v.get("requirement") == "required":
            t = dictionary.get(k, {})
            required[k] = {"type": v.get("type", t.get("type")), "is_array": bool(t.get("is_array"))}
    return {"sources": sources, "required": required, "at_least_one": at_least_one,
            "attributes": sorted(attrs), "profiles": profiles}, attrs


out = {"ocsf_version": tag, "source": "https://github.com/ocsf/ocsf-schema",
       "generated_by": "scripts/ocsf-vendor.py", "classes": {}, "objects": {}, "enums": {}}
for cls, uid in [("base_event", 0), ("file_activity", 1001)]:
    flat, attrs = flatten(cls)
    flat["class_uid"] = uid
    out["classes"][cls] = flat
    out["enums"][f"{cls}.activity_id"] = {k: v["caption"] for k, v in attrs["activity_id"]["enum"].items()}
    sev = attrs["severity_id"].get("enum") or dictionary["severity_id"]["enum"]
    out["enums"][f"{cls}.severity_id"] = {k: v["caption"] for k, v in sev.items()}
for o in OBJECTS:
    flat, attrs = flatten(o)
    out["objects"][o] = flat
    if o == "file":
        out["enums"]["file.type_id"] = {k: v["caption"] for k, v in attrs["type_id"]["enum"].items()}
    if o == "device":
        out["enums"]["device.type_id"] = {k: v["caption"] for k, v in attrs["type_id"]["enum"].items()}
# Dictionary types of the attributes confgate writes (to check what it writes is typed right).
WRITTEN = ["app_name", "type", "profiles", "reporter", "time", "activity_id", "activity_name", "category_uid", "category_name", "class_uid",
           "class_name", "severity_id", "severity", "type_uid", "type_name", "status_id", "status",
           "status_code", "pid", "cmd_line", "name", "uid", "type_id", "path", "version", "hostname",
           "ancestry", "parent_process", "created_time", "working_directory", "tid", "issuer",
           "vendor_name", "message", "unmapped", "file_result", "uuid", "log_name", "product",
           "user", "session", "process", "actor", "device", "file", "metadata"]
out["dictionary"] = {k: {"type": dictionary[k].get("type"), "is_array": bool(dictionary[k].get("is_array"))}
                     for k in WRITTEN}
json.dump(out, sys.stdout, indent=1, sort_keys=True)
print()
