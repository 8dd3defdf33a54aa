"""Validates OCSF events against the OCSF JSON schema.

Usage: validate.py EVENTS.jsonl

Each line is one OCSF event. Its class (`class_uid`) and schema version
(`metadata.version`) pick the JSON schema that the `ocsf-json-schema` package
generates from the OCSF schema it ships (no network); `jsonschema` checks the
event against it (Draft 2020-12: required attributes, types, enums, no
attribute the class does not define). Prints every violation and exits 1 if
there is any; scripts/setup installs both packages into .venv.
"""

import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

schemas = {}
validators = {}


def validator_for(version, class_uid):
    key = (version, class_uid)
    if key not in validators:
        if version not in schemas:
            schemas[version] = OcsfJsonSchemaEmbedded(get_ocsf_schema(version))
        schema = schemas[version]
        name = schema.lookup_class_name_from_uid(class_uid)
        class_schema = schema.get_class_schema(name)
        Draft202012Validator.check_schema(class_schema)
        validators[key] = (name, Draft202012Validator(class_schema))
    return validators[key]


def main(path):
    count = errors = 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            event = json.loads(line)
            count += 1
            version = event.get("metadata", {}).get("version")
            try:
                name, v = validator_for(version, event.get("class_uid"))
            except Exception as e:  # an unknown version or class is a failure too
                print(f"event {n}: no schema for version {version!r}, class {event.get('class_uid')!r}: {e}")
                errors += 1
                continue
            for e in sorted(v.iter_errors(event), key=lambda e: e.json_path):
                print(f"event {n} ({name}, seq {event.get('metadata', {}).get('sequence')}): {e.json_path}: {e.message}")
                errors += 1
    print(f"{count} OCSF events checked, {errors} violations")
    return 1 if errors or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
