"""Graph passes: the PassManager and pass registry (manager.py), declarative rewrite
rules (pattern.py), and one module per pass. See README.md in this folder for the
invariants every pass may assume and how to write one."""

from einfuse.passes.manager import PASSES, Pass, PassManager, PassRecord, get_pass, register_pass, registered_passes

__all__ = ["PASSES", "Pass", "PassManager", "PassRecord", "get_pass", "register_pass", "registered_passes"]
