"""Node layers and sections (``_core.nodes``): consecutive pairs, the last to the output."""

import dataclasses

import pytest

from sklearn_lib._core.nodes import OUTPUT_NODE, Section, n_positions, sections_of


def test_the_output_node_is_named_output():
    assert OUTPUT_NODE == "output"


@pytest.mark.parametrize(
    "shape, expected", [((7,), 1), ((3, 7), 3), ((2, 3, 7), 6), ((0, 7), 0), ((), 1)]
)
def test_positions_are_the_product_of_all_but_the_feature_axis(shape, expected):
    assert n_positions(shape) == expected


def test_a_section_to_a_node_layer():
    section = Section("fc1", "fc2", (3, 4), (3, 5))
    assert not section.to_output
    assert section.dst_title == "'fc2'"
    assert section.exact_rows == 3 * 5
    assert str(section) == "'fc1' -> 'fc2'"


def test_a_section_to_the_output():
    section = Section("fc3", OUTPUT_NODE, (4,), (2, 6, 10))
    assert section.to_output
    assert section.dst_title == "the model output"
    assert section.exact_rows == 2 * 6 * 10
    assert str(section) == "'fc3' -> 'output'"


def test_sections_are_frozen_values():
    section = Section("a", "b")
    assert section.src_shape is None and section.dst_shape is None
    assert section == Section("a", "b", None, None) and hash(section) == hash(Section("a", "b"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        section.dst = "c"


def test_sections_pair_consecutive_nodes_the_last_with_the_output():
    shapes = {"a": (4,), "b": (2, 5), "c": (6,)}
    sections = sections_of(iter(["a", "b", "c"]), shapes, output_shape=(3,))
    assert sections == (
        Section("a", "b", (4,), (2, 5)),
        Section("b", "c", (2, 5), (6,)),
        Section("c", OUTPUT_NODE, (6,), (3,)),
    )


def test_sections_without_shapes_leave_them_none():
    assert sections_of(["a", "b"]) == (Section("a", "b"), Section("b", OUTPUT_NODE))
    # A node whose shape is missing from the dict is None at both of its ends.
    first, second = sections_of(["a", "b"], {"a": (4,)})
    assert first.dst_shape is None and second.src_shape is None and first.src_shape == (4,)


def test_one_node_is_one_section_and_no_node_none():
    assert sections_of(["only"], {"only": (3,)}, (2,)) == (
        Section("only", OUTPUT_NODE, (3,), (2,)),
    )
    assert sections_of([]) == ()
