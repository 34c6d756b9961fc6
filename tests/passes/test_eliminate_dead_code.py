"""eliminate-dead-code: before/after IR text."""

from einfuse.ir.parser import parse
from einfuse.passes import PassManager
from tests.passes.helpers import check_rewrite


def test_removes_unused_chains_and_constants():
    check_rewrite(
        """
        graph @main(%x: f32[B,4], %unused: f32[3]) -> (%y: f32[B,4]) {
          @w = const [1.0, 2.0, 3.0, 4.0] : f32[4]
          @orphan = const [7.0] : f32[1]
          @only_dead = const [5.0] : f32[1]
          %a = add(%x, @w) : f32[B,4]
          %d1 = mul(%a, @only_dead) : f32[B,4]
          %d2 = exp(%d1) : f32[B,4]
          %y = relu(%a) : f32[B,4]
          %d3 = neg(%y) : f32[B,4]
          return %y
        }
        """,
        # Graph inputs are the signature: %unused stays.
        """
        graph @main(%x: f32[B,4], %unused: f32[3]) -> (%y: f32[B,4]) {
          @w = const [1.0, 2.0, 3.0, 4.0] : f32[4]
          %a = add(%x, @w) : f32[B,4]
          %y = relu(%a) : f32[B,4]
          return %y
        }
        """,
        "eliminate-dead-code",
    )


def test_multi_output_node_stays_whole_when_one_output_is_used():
    check_rewrite(
        """
        graph @main(%x: f32[2,6]) -> (%y: f32[2,2]) {
          %p, %q = split(%x) {axis=1, split=(2,4)} : f32[2,2], f32[2,4]
          %dead = neg(%q) : f32[2,4]
          %y = relu(%p) : f32[2,2]
          return %y
        }
        """,
        """
        graph @main(%x: f32[2,6]) -> (%y: f32[2,2]) {
          %p, %q = split(%x) {axis=1, split=(2,4)} : f32[2,2], f32[2,4]
          %y = relu(%p) : f32[2,2]
          return %y
        }
        """,
        "eliminate-dead-code",
    )


def test_outputs_and_their_producers_are_kept_even_when_returned_twice():
    text = """
        graph @main(%x: f32[4]) -> (%a: f32[4], %x: f32[4], %a: f32[4]) {
          @c = const [1.0, 2.0, 3.0, 4.0] : f32[4]
          %a = add(%x, @c) : f32[4]
          return %a, %x, %a
        }
    """
    check_rewrite(text, text, "eliminate-dead-code")


def test_live_graph_is_reported_unchanged():
    g = parse("""
        graph @main(%x: f32[4]) -> (%y: f32[4]) {
          %y = relu(%x) : f32[4]
          return %y
        }
    """)
    pm = PassManager(["eliminate-dead-code"], verify=True)
    pm.run(g)
    assert [(r.nodes_before, r.nodes_after, r.changed) for r in pm.records] == [(1, 1, False)]
