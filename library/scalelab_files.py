#!/usr/bin/python
# Copyright: scalelab contributors; Apache License 2.0 (see pyproject.toml)
"""Directories and small files of one role on one host, in one module run."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: scalelab_files
short_description: Make several directories and write several small files in one module run
description:
  - Makes each of O(directories) and gives it its owner, group and mode (missing parents too, as
    M(ansible.builtin.file) does), then writes each of O(files) whose content differs and gives it its
    owner, group and mode.
  - A loop of M(ansible.builtin.file) or M(ansible.builtin.template) costs one or two module runs per
    item (a fresh Python on the host each); this costs one for all of them. Render the contents on the
    controller (the P(ansible.builtin.template#lookup) lookup) and pass them here.
  - A file is written through a temporary file in its own directory and moved into place, so a reader
    sees the old content or the new one, never part of either. A link at a file's path is replaced by
    the file; a link to a directory at a directory's path stands for that directory.
  - Keep secrets out of O(files) or set C(no_log) on the task; contents appear in C(--diff) output.
options:
  directories:
    description: Directories, made in the order given (parents first when both are listed).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      owner:
        description: Owner (name or id).
        type: str
      group:
        description: Group (name or id).
        type: str
      mode:
        description: Mode, as an octal string like V(0750).
        type: raw
  files:
    description: Files, written after the directories; a file's directory must exist or be listed.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      content:
        description: The whole content (text).
        type: str
        required: true
      owner:
        description: Owner (name or id).
        type: str
      group:
        description: Group (name or id).
        type: str
      mode:
        description: Mode, as an octal string like V(0644).
        type: raw
attributes:
  check_mode:
    description: Reports what it would change and changes nothing.
    support: full
  diff_mode:
    description: Shows each file's content before and after, and each changed attribute.
    support: full
author: scalelab
"""

EXAMPLES = r"""
- name: Write the daemon's directories, configuration and unit
  scalelab_files:
    directories:
      - {path: /etc/mydaemon, owner: root, group: root, mode: "0755"}
    files:
      - path: /etc/mydaemon/mydaemon.conf
        content: "{{ lookup('ansible.builtin.template', 'mydaemon.conf.j2') }}"
        owner: root
        group: root
        mode: "0644"
  notify: Restart mydaemon
"""

RETURN = r"""
changed_paths:
  description: The directories and files made, written or given other attributes, in order.
  returned: always
  type: list
  elements: str
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_native

_ENTRY = {
    "path": {"type": "path", "required": True},
    "owner": {"type": "str"},
    "group": {"type": "str"},
    "mode": {"type": "raw"},
}


def _attributes(module, entry, changed, diffs):
    """Give entry['path'] its owner, group and mode; True if any differed (not applied in check mode)."""
    args = module.load_file_common_arguments(
        {"path": entry["path"], "owner": entry["owner"], "group": entry["group"], "mode": entry["mode"]})
    diff = {"before": {"path": entry["path"]}, "after": {"path": entry["path"]}}
    differed = module.set_fs_attributes_if_different(args, False, diff=diff)
    if differed:
        diffs.append(diff)
    return changed or differed


def _directory(module, entry):
    path = entry["path"]
    b_path = to_bytes(path, errors="surrogate_or_strict")
    if os.path.lexists(b_path) and not os.path.isdir(b_path):
        module.fail_json(msg=f"{path} exists and is not a directory: move it away, then run again")
    if os.path.isdir(b_path):
        diffs = []
        # A link to a directory (a data directory on another disk) stands for it, as with `file`.
        target = dict(entry, path=os.path.realpath(path))
        return _attributes(module, target, False, diffs), diffs
    diffs = [{"before": {"path": path, "state": "absent"}, "after": {"path": path, "state": "directory"}}]
    if not module.check_mode:
        missing = [b_path]
        while not os.path.isdir(os.path.dirname(missing[-1])):
            missing.append(os.path.dirname(missing[-1]))
        for b_dir in reversed(missing):  # missing parents get the same attributes, as with `file`
            os.mkdir(b_dir)
            _attributes(module, dict(entry, path=to_native(b_dir, errors="surrogate_or_strict")), True, [])
    return True, diffs


def _file(module, entry):
    path = entry["path"]
    b_path = to_bytes(path, errors="surrogate_or_strict")
    b_content = to_bytes(entry["content"], errors="surrogate_or_strict")
    diff = {"before_header": path, "after_header": path, "before": "", "after": entry["content"]}
    if os.path.lexists(b_path) and not os.path.isfile(b_path):
        module.fail_json(msg=f"{path} exists and is not a regular file: move it away, then run again")
    b_dir = os.path.dirname(b_path)
    if not os.path.isdir(b_dir) and not module.check_mode:
        module.fail_json(msg=f"{path}: its directory {to_native(b_dir)} does not exist: list it in directories")
    # A link is replaced by the file (as `template` and `copy` do by default), never written through.
    exists = os.path.isfile(b_path) and not os.path.islink(b_path)
    before = b""
    if exists:
        with open(b_path, "rb") as f:
            before = f.read()
        diff["before"] = to_native(before, errors="surrogate_or_strict")
    if exists and before == b_content:
        diffs = []
        return _attributes(module, entry, False, diffs), diffs
    if module.check_mode:
        return True, [diff]
    fd, b_tmp = tempfile.mkstemp(dir=b_dir, prefix=b".scalelab-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b_content)
            f.flush()
            os.fsync(f.fileno())
        module.atomic_move(b_tmp, b_path, unsafe_writes=False)
    finally:
        if os.path.lexists(b_tmp):
            os.unlink(b_tmp)
    _attributes(module, entry, True, [])
    return True, [diff]


def main():
    module = AnsibleModule(
        argument_spec={
            "directories": {"type": "list", "elements": "dict", "default": [], "options": _ENTRY},
            "files": {"type": "list", "elements": "dict", "default": [],
                      "options": dict(_ENTRY, content={"type": "str", "required": True})},
        },
        supports_check_mode=True,
    )
    changed_paths, diffs = [], []
    for make, entries in ((_directory, module.params["directories"]), (_file, module.params["files"])):
        for entry in entries:
            changed, entry_diffs = make(module, entry)
            if changed:
                changed_paths.append(entry["path"])
                diffs.extend(entry_diffs)
    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths, diff=diffs)


if __name__ == "__main__":
    main()
