#!/usr/bin/python
# Copyright: fleet contributors
# Apache-2.0 (see the fleet project)
"""Ansible module ``fleet_run``: run ``fleet run PLAN --json`` on a station and report it.

How this works
--------------
The module never imports fleet: it runs the ``fleet`` command (so the station's fleet install, in
whatever virtualenv, does the work) with ``--json``, reads the ONE JSON document fleet prints on
stdout and the JSON log lines it writes on stderr, and shapes them into an Ansible result:
``changed`` is fleet's ``changed``; check mode passes ``--check`` (fleet then sends only read-only
commands); diff mode turns each device's planned actions (check mode) or key outcomes (a real run)
into a before/after text; exit status 1, 2 and 3 fail the task with fleet's own message.
It runs with any Python 3.8+ that Ansible picks on the station.
"""

import base64
import binascii
import hashlib
import json

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: fleet_run
short_description: Provision keys on a station's nRF91 modems with C(fleet run)
description:
  - Runs C(fleet run PLAN --json) on the target station, which opens the plan's serial ports,
    generates the keys with C(AT%KEYGEN), journals every step and writes a signed manifest.
  - Reports C(changed) exactly as fleet does - true whenever a write may have reached a device
    (a key generated, recovered or replaced, a key deleted, a function mode or a certificate
    written; or would be, in check mode); a re-run that finds every key in place is not changed.
  - Fails with fleet's own message when fleet exits 1 (some devices failed - the others finished
    and the manifest is still written), 2 (plan or usage error - nothing was sent to any device)
    or 3 (interrupted - the journal is consistent and a re-run resumes).
  - Never imports fleet - it calls the C(fleet) executable, so fleet may live in its own virtualenv
    on the station.
author:
  - fleet contributors
options:
  plan:
    description:
      - Path of the YAML plan on the station. Relative paths are relative to I(chdir).
    type: path
    required: true
  fleet:
    description:
      - The fleet executable. A bare name is looked up in C(PATH); give the full path of a
        virtualenv's C(bin/fleet) otherwise.
    type: str
    default: fleet
    aliases: [executable]
  journal:
    description:
      - The journal file (C(--journal)). When left out, fleet uses the plan's journal (the
        plan's C(journal) key, or C(.fleet/<plan name>.journal.sqlite) beside the plan), the
        same one a run by hand of the plan uses, from any directory, so either resumes the
        other. A relative path is relative to I(chdir).
    type: path
  concurrency:
    description:
      - At most this many slots at once (C(--concurrency)); default - the plan's setting, or all
        slots.
    type: int
  only:
    description:
      - Only these slots, by slot name or port (one C(--only=SLOT) each, so an item that looks
        like an option is still a slot name).
    type: list
    elements: str
    default: []
  fresh:
    description:
      - Start a new run instead of resuming an interrupted one (C(--fresh)). What the devices
        already hold is still honoured.
    type: bool
    default: false
  chdir:
    description:
      - Run fleet in this directory.
    type: path
attributes:
  check_mode:
    support: full
    details: >-
      Passes C(--check) - fleet sends only read-only commands (identify, C(AT+CFUN?),
      C(AT%CMNG=1)) and reports what a real run would do; no manifest is written.
  diff_mode:
    support: full
    details: >-
      One before/after text per device whose keys change (or would change), one line per
      key, for example C(tls: absent) -> C(tls: generate (sec_tag 16842753)).
notes:
  - The station needs fleet installed and the plan, its signing key and its ports in place.
  - Every real run writes a new signed manifest, also when nothing changed; its path is returned
    in C(manifest) so a playbook can fetch it.
  - The fleet README, section "Using fleet from Ansible", shows the playbook (C(site.yml) beside
    this module's C(library/) folder), the inventory and how manifests are collected and verified.
"""

EXAMPLES = r"""
- name: Provision this station's modems
  fleet_run:
    plan: /srv/fleet/line1-a.yaml
    fleet: /opt/fleet/venv/bin/fleet
  register: fleet_result

- name: Only two slots, five at a time, in a fresh run
  fleet_run:
    plan: /srv/fleet/line1-a.yaml
    only: [slot0, slot1]
    concurrency: 5
    fresh: true

- name: What would a run do? (no write command reaches any modem)
  fleet_run:
    plan: /srv/fleet/line1-a.yaml
  check_mode: true
  diff: true

- name: Collect the signed manifest
  ansible.builtin.fetch:
    src: "{{ fleet_result.manifest }}"
    dest: "manifests/{{ inventory_hostname }}/"
    flat: true
  when: fleet_result.manifest is not none
"""

RETURN = r"""
changed:
  description: Whether a write of fleet's may have reached (or, in check mode, would reach) any
    device.
  returned: always
  type: bool
manifest:
  description: Path of the signed manifest fleet wrote on the station; null in check mode and
    when fleet stopped before writing one.
  returned: always
  type: str
  sample: /srv/fleet/out/line1-a-20250101-120000Z.json
devices:
  description:
    - Per device, as in C(fleet run --json) - C(slot), C(port), C(imei), C(device_uuid),
      C(model), C(firmware), C(outcome) (done, failed, interrupted, not-started), C(error),
      C(changed), and C(keys) (C(name), C(sec_tag), C(type), C(response), C(outcome), C(error),
      C(attempts), C(deleted), C(csr_pem), C(public_key_pem)).
    - In check mode each device also has C(planned) - per key C(name), C(sec_tag), C(type),
      C(action) (nothing, keep, fail, generate, recover, replace, capture), C(outcome),
      C(changed) and C(reason).
  returned: when fleet printed its JSON document
  type: list
  elements: dict
summary:
  description: The number of devices and the count per device outcome.
  returned: when fleet printed its JSON document
  type: dict
  sample: {"devices": 8, "done": 8}
run_id:
  description: The run's id (in the journal and the manifest); C(check-...) in check mode.
  returned: when fleet printed its JSON document
  type: str
station:
  description: The plan's station name.
  returned: when fleet printed its JSON document
  type: str
check:
  description: Whether fleet ran with C(--check).
  returned: always
  type: bool
interrupted:
  description: Whether the run was interrupted (exit status 3).
  returned: when fleet printed its JSON document
  type: bool
resumed:
  description: Whether this run resumed an interrupted one.
  returned: when fleet printed its JSON document
  type: bool
rc:
  description: fleet's exit status (0 done, 1 some devices failed, 2 plan or usage error,
    3 interrupted).
  returned: always
  type: int
cmd:
  description: The command that was run.
  returned: always
  type: list
  elements: str
fleet_log:
  description: >-
    fleet's log lines from stderr, each the JSON object fleet wrote (C(event), C(level),
    C(timestamp) and context); a line that is not JSON is C({"event": line}).
  returned: always
  type: list
  elements: dict
"""

# fleet's exit statuses (fleet/exitcodes.py in the fleet project).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3

# Check mode: what the sec_tag holds before, per (planned action, outcome).
_BEFORE = {
    "nothing": "present",
    "keep": "present (not made by fleet)",
    "fail": "present (not made by fleet)",
    "replace": "present (not made by fleet)",
    "recover": "present (an interrupted %KEYGEN: its answer was never captured)",
    "generate": "absent",
}


def build_command(fleet, params, check):
    """The ``fleet run`` argument list for the module's parameters."""
    cmd = [fleet, "run", params["plan"], "--json"]
    if check:
        cmd.append("--check")
    if params.get("journal"):
        cmd += ["--journal", params["journal"]]
    if params.get("concurrency") is not None:
        cmd += ["--concurrency", str(params["concurrency"])]
    if params.get("fresh"):
        cmd.append("--fresh")
    # One --only=VALUE per item: a value is never taken for an option (an item "--check" would
    # otherwise turn a real run into a check run), nor the plan for a slot.
    cmd += [f"--only={slot}" for slot in params.get("only") or ()]
    return cmd


def parse_document(stdout):
    """fleet's one JSON document, or None when stdout holds none."""
    text = (stdout or "").strip()
    if not text:
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def parse_log(stderr):
    """fleet's stderr as records: JSON log lines as they are, other lines as ``{"event": ...}``."""
    records = []
    for line in (stderr or "").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        records.append(record if isinstance(record, dict) else {"event": line})
    return records


def format_record(record):
    """One log record as a line of text: ``level: event (key=value, ...)``."""
    context = ", ".join(f"{k}={v}" for k, v in sorted(record.items())
                        if k not in ("event", "level", "timestamp"))
    text = str(record.get("event", ""))
    if record.get("level"):
        text = f"{record['level']}: {text}"
    return f"{text} ({context})" if context else text


def _device_name(device):
    name = f"{device.get('slot')} ({device.get('port')}"
    if device.get("imei"):
        name += f", IMEI {device['imei']}"
    return name + ")"


def failure_message(rc, document, log):
    """The task's ``msg`` for a fleet exit status other than 0."""
    if rc == EXIT_FAILED and document is not None:
        devices = document.get("devices") or []
        failed = [d for d in devices if d.get("outcome") == "failed"]
        parts = "; ".join(f"{_device_name(d)}: {d.get('error') or 'failed'}" for d in failed)
        return (f"fleet run: {len(failed)} of {len(devices)} devices failed "
                f"(the others finished): {parts or 'see devices'}")
    if rc == EXIT_INTERRUPTED:
        done = 0
        total = 0
        if document is not None:
            devices = document.get("devices") or []
            total = len(devices)
            done = len([d for d in devices if d.get("outcome") == "done"])
        return ("fleet run was interrupted: the journal is consistent and a re-run resumes "
                f"({done} of {total} devices done)")
    lines = [format_record(r) for r in log
             if r.get("level") in (None, "error", "critical", "exception")]
    if rc == EXIT_USAGE:
        prefix = "fleet run: plan or usage error, nothing was sent to any device"
    elif rc == EXIT_FAILED:
        prefix = "fleet run failed"
    elif rc < 0:
        prefix = f"fleet run was killed by signal {-rc}"
    else:
        prefix = f"fleet run exited with status {rc}"
    return "\n".join([prefix, *lines])


def _fingerprint(public_key_pem):
    """The first 16 hex digits of the SHA-256 of a PEM public key's DER, or None."""
    if not public_key_pem:
        return None
    body = "".join(line for line in public_key_pem.splitlines() if not line.startswith("-----"))
    try:
        der = base64.b64decode(body)
    except (binascii.Error, ValueError):
        return None
    return hashlib.sha256(der).hexdigest()[:16]


def _planned_lines(planned):
    before, after = [], []
    for entry in planned:
        action, outcome = entry.get("action"), entry.get("outcome")
        if action == "capture":
            reason = str(entry.get("reason", ""))
            if outcome == "changed":
                state = "absent (the key in the journal is no longer on the device)"
            elif outcome == "pre-existing":
                state = "present (not yet in the journal)"
            elif reason.startswith("no "):
                state = "absent"
            else:
                state = "present (an interrupted %KEYGEN: its answer was never captured)"
        else:
            state = _BEFORE.get(action, str(action))
        name = entry.get("name")
        before.append(f"{name}: {state}")
        if entry.get("changed"):
            after.append(f"{name}: {action} (sec_tag {entry.get('sec_tag')})")
        else:
            after.append(before[-1])
    return before, after


# A real run: (before, after) per key outcome; after gets the key's fingerprint when known.
_OUTCOME_TEXT = {
    "generated": ("no key from fleet", "generated"),
    "recovered": ("present (an interrupted %KEYGEN: its answer was never captured)",
                  "recovered: deleted and generated again"),
    "changed": ("the key in the journal", "changed: a different key captured"),
    "unchanged": ("present", "present"),
    "pre-existing": ("present (not made by fleet)", "present (not made by fleet)"),
}


def _outcome_lines(keys):
    before, after = [], []
    for key in keys:
        name, outcome = key.get("name"), key.get("outcome")
        fingerprint = _fingerprint(key.get("public_key_pem"))
        if outcome in _OUTCOME_TEXT:
            old, new = _OUTCOME_TEXT[outcome]
            if outcome in ("generated", "recovered", "changed"):
                new = f"{new} (sec_tag {key.get('sec_tag')}"
                new += f", public key SHA-256 {fingerprint}...)" if fingerprint else ")"
            before.append(f"{name}: {old}")
            after.append(f"{name}: {new}")
        else:  # failed, not-attempted: nothing is claimed about the device
            text = f"{name}: {outcome}"
            if key.get("error"):
                text += f" ({key['error']})"
            before.append(text)
            after.append(text)
    return before, after


def device_diffs(document):
    """Ansible diffs, one per device whose keys change (or would change): a list of
    ``{before, after, before_header, after_header}``. A real run's key outcomes are those of
    the whole fleet run, which may have begun in an earlier, interrupted invocation: only the
    devices this invocation changed get a diff."""
    diffs = []
    for device in (document or {}).get("devices") or []:
        if "planned" in device:
            before, after = _planned_lines(device["planned"])
        elif device.get("changed"):
            before, after = _outcome_lines(device.get("keys") or [])
        else:
            continue
        if before == after:
            continue
        header = _device_name(device)
        diffs.append({"before": "\n".join(before) + "\n", "after": "\n".join(after) + "\n",
                      "before_header": header, "after_header": header})
    return diffs


def main():
    module = AnsibleModule(
        argument_spec=dict(
            plan=dict(type="path", required=True),
            fleet=dict(type="str", default="fleet", aliases=["executable"]),
            journal=dict(type="path"),
            concurrency=dict(type="int"),
            only=dict(type="list", elements="str", default=[]),
            fresh=dict(type="bool", default=False),
            chdir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["concurrency"] is not None and params["concurrency"] < 1:
        module.fail_json(msg="concurrency must be at least 1", changed=False)
    fleet = params["fleet"]
    if "/" not in fleet:
        fleet = module.get_bin_path(fleet, required=True)
    cmd = build_command(fleet, params, module.check_mode)
    rc, stdout, stderr = module.run_command(cmd, cwd=params["chdir"])
    document = parse_document(stdout)
    log = parse_log(stderr)
    for record in log:
        if record.get("level") == "warning":
            module.warn(f"fleet: {format_record(record)}")

    result = dict(changed=False, manifest=None, check=module.check_mode, rc=rc, cmd=cmd,
                  fleet_log=log)
    if document is not None:
        result.update(
            changed=bool(document.get("changed")),
            manifest=document.get("manifest"),
            devices=document.get("devices") or [],
            summary=document.get("summary") or {},
            run_id=document.get("run_id"),
            station=document.get("station"),
            check=bool(document.get("check", module.check_mode)),
            interrupted=bool(document.get("interrupted")),
            resumed=bool(document.get("resumed")),
        )
        if module._diff:
            result["diff"] = device_diffs(document)
    if rc != EXIT_OK:
        module.fail_json(msg=failure_message(rc, document, log), **result)
    if document is None:
        module.fail_json(msg="fleet run exited 0 but printed no JSON document on stdout",
                         stdout=stdout, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
