"""Repository functions: patches, search, tags, stacks, evaluations, jobs (dataclasses out)."""

import pytest

from fmn_desktop.registry import (
    NotFoundError,
    PatchInUseError,
    PatchRecord,
    RegistryError,
    StackRecord,
)


def test_add_patch_fills_the_row_from_metadata(reg, make_patch):
    data = make_patch(
        ["castle", "tower"],
        extra={"fmn.hyperparameters": '{"steps": 35}', "modelspec.title": "no castles"},
    )
    rec = reg.add_patch(data, tags=["demo", " "], notes="first try")
    assert isinstance(rec, PatchRecord)
    assert rec.name == "forget-castle-tower" and rec.concepts == ["castle", "tower"]
    assert rec.kind == "forget" and rec.format == "diff" and rec.base_fingerprint == "base-fp"
    assert rec.hyperparameters == {"steps": 35} and rec.title == "no castles"
    assert rec.tags == ["demo"] and rec.size == len(data)
    assert rec.path.read_bytes() == data and rec.path.parent.name == rec.sha256[:2]
    again = reg.add_patch(data, tags=["again"])  # same bytes: the same record, tags merged
    assert again.id == rec.id and again.tags == ["again", "demo"]
    second = reg.add_patch(make_patch(["castle", "tower"], fill=b"\1"))
    assert second.name == "forget-castle-tower-2"
    assert [p.id for p in reg.list_patches()] == [rec.id, second.id]
    assert reg.get_patch(rec.sha256[:8]).id == rec.id
    assert reg.get_patch(str(second.id)).name == second.name
    with pytest.raises(NotFoundError, match="no patch 'nope'; known: forget-castle-tower"):
        reg.get_patch("nope")
    with pytest.raises(RegistryError, match="already exists"):
        reg.add_patch(make_patch(fill=b"\2"), name="forget-castle-tower")
    with pytest.raises(RegistryError, match="bare number"):
        reg.add_patch(make_patch(fill=b"\3"), name="12")


def test_filters_search_and_tags(reg, make_patch):
    a = reg.add_patch(make_patch(["Van Gogh"]), tags=["style"], notes="swirly skies")
    b = reg.add_patch(make_patch(["castle"], kind="correct"), name="fix-castle")
    assert [p.id for p in reg.list_patches(kind="correct")] == [b.id]
    assert [p.id for p in reg.list_patches(tag="style")] == [a.id]
    assert [p.id for p in reg.list_patches(concept="van gogh")] == [a.id]
    assert [p.id for p in reg.search("gogh")] == [a.id]
    assert [p.id for p in reg.search("skies")] == [a.id]  # porter stemming: sky/skies
    assert [p.id for p in reg.search("fix")] == [b.id]
    assert reg.search('"unbalanced quote') == []  # user text is quoted, never an FTS error
    reg.tag(b.id, add=["keep", "castle-work"])
    assert [p.id for p in reg.search("keep")] == [b.id]
    assert reg.tag(b.id, remove=["keep"]).tags == ["castle-work"]
    renamed = reg.update_patch(b.id, name="castle-fix", notes="now with notes")
    assert renamed.name == "castle-fix" and [p.id for p in reg.search("notes")] == [b.id]


def test_stacks_keep_order_and_strengths(reg, make_patch):
    p1, p2, p3 = (reg.add_patch(make_patch([c])) for c in ("castle", "dog", "tree"))
    s = reg.create_stack("clean", mode="fused", notes="three")
    assert isinstance(s, StackRecord) and s.items == []
    reg.add_to_stack("clean", p1.name)
    reg.add_to_stack("clean", p2.name, strength=-0.5)
    s = reg.add_to_stack("clean", p3.name, position=0)
    assert [(i.position, i.patch.name, i.strength) for i in s.items] == [
        (0, p3.name, 1.0),
        (1, p1.name, 1.0),
        (2, p2.name, -0.5),
    ]
    s = reg.add_to_stack("clean", p2.name, strength=0.25)  # already there: new strength
    assert [i.strength for i in s.items] == [1.0, 1.0, 0.25]
    s = reg.remove_from_stack("clean", p1.name)
    assert [(i.position, i.patch.name) for i in s.items] == [(0, p3.name), (1, p2.name)]
    with pytest.raises(NotFoundError, match="not in stack"):
        reg.remove_from_stack("clean", p1.name)
    with pytest.raises(RegistryError, match="already exists"):
        reg.create_stack("clean")
    with pytest.raises(RegistryError, match="unknown stack mode"):
        reg.create_stack("x", mode="magic")
    with pytest.raises(RegistryError, match="finite"):
        reg.add_to_stack("clean", p1.name, strength=float("nan"))
    assert reg.update_stack("clean", mode="additive").mode == "additive"
    assert [x.name for x in reg.list_stacks()] == ["clean"]
    with pytest.raises(NotFoundError, match="known: clean"):
        reg.get_stack("dirty")


def test_deleting_a_patch_in_a_stack_is_refused_unless_cascade(reg, make_patch):
    p1, p2 = reg.add_patch(make_patch(["castle"])), reg.add_patch(make_patch(["dog"]))
    reg.create_stack("s")
    reg.add_to_stack("s", p1.id)
    reg.add_to_stack("s", p2.id)
    reg.add_evaluation("mscore", 0.1, patch=p1.id, concept="castle")
    with pytest.raises(PatchInUseError, match="used by stack\\(s\\) s"):
        reg.remove_patch(p1.id)
    assert reg.get_patch(p1.id).path.is_file()
    reg.remove_patch(p1.id, cascade=True)
    assert [i.patch.id for i in reg.get_stack("s").items] == [p2.id]
    assert reg.get_stack("s").items[0].position == 0
    assert not p1.path.exists() and reg.evaluations(patch=p2.id) == []
    reg.delete_stack("s")
    reg.remove_patch(p2.name)
    assert reg.list_patches() == [] and reg.store.files() == {}


def test_evaluations_base_models_and_jobs(reg, make_patch):
    p = reg.add_patch(make_patch())
    reg.create_stack("s")
    e = reg.add_evaluation(
        "mscore",
        0.12,
        patch=p.name,
        concept="castle",
        low=0.1,
        high=0.14,
        n=24,
        settings={"seeds": 8},
    )
    reg.add_evaluation("retention", 0.93, stack="s")
    assert e.settings == {"seeds": 8} and e.patch_id == p.id
    assert [x.metric for x in reg.evaluations(stack="s")] == ["retention"]
    with pytest.raises(RegistryError, match="exactly one"):
        reg.add_evaluation("x", 1.0)
    bm = reg.add_base_model("base-fp", name="sd15", path="/m", family="sd1")
    assert reg.get_patch(p.id).base_model_id == bm.id  # linked when the base became known
    assert reg.add_patch(make_patch(fill=b"\7")).base_model_id == bm.id
    bm = reg.add_base_model("f" * 64, name="sd15", path="/m", family="sd1")
    assert reg.add_base_model("f" * 64, path="/elsewhere").id == bm.id
    assert reg.base_model("f" * 64).path == "/elsewhere"
    with reg.job("export", {"out": "x"}) as job:
        job["patch"] = p.id
        job["message"] = "done"
    with pytest.raises(ValueError), reg.job("export", {}):
        raise ValueError("boom")
    jobs = reg.jobs()
    assert [(j.status, j.message) for j in jobs] == [("failed", "ValueError: boom"), ("ok", "done")]
    assert jobs[1].patch_id == p.id and jobs[1].finished
