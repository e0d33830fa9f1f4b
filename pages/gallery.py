"""Gallery: every neuron of the run at a glance, sortable; a click on a row opens its profile."""
from __future__ import annotations

import streamlit as st

from compactvision.viz.layout import png_data_uri
from compactvision.viz.performance import accuracy_by_neuron_figure
from app_support.caches import cards, neuron_data, require_run, synthesised
from app_support.entry import run_through_app
from app_support.locations import PROFILE_PAGE
from app_support.long_work import long_work
from app_support.widgets import show_figure

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

st.title("Gallery")
run = require_run()
rows = cards(run)
if not rows:
    st.info("This run has no compact models yet.")
    st.stop()
st.caption(f"{len(rows)} neurons. Sort by any column; click a row to open that neuron's profile. "
           "*r* is against the measured held-out responses; the noise ceiling is the best *r* the repeats allow.")



def _synthesise_all(progress) -> dict:
    """Every compact model's synthesised preferred image (each also cached for its profile)."""
    out = {}
    for k, row in enumerate(rows):
        out[row["neuron_id"]] = png_data_uri(synthesised(run, row["neuron_id"]))
        progress(row["neuron_id"], k + 1, len(rows))
    return out


synth = long_work(run, "gallery_synth", ("gallery synthesis",), "Synthesising every neuron's preferred image",
                  _synthesise_all, button="Synthesise every neuron's preferred image")

def _top_image(row: dict) -> str | None:
    data = neuron_data(run, row["neuron_id"])
    return None if data is None or row["top_image"] is None else png_data_uri(data.images[row["top_image"]])


table = {
    "neuron": [r["neuron_id"] for r in rows],
    "type": [r["label"] for r in rows],
    "top image": [_top_image(r) for r in rows],
    **({"synthesised": [synth[r["neuron_id"]] for r in rows]} if synth is not None else {}),
    "parameters": [r["n_parameters"] for r in rows],
    "filters per layer": [" · ".join(map(str, r["channels"])) for r in rows],
    "consolidated": [r["consolidated"] for r in rows],
    "r compact": [r["r_student"] for r in rows],
    # A run without teacher scores (imported or truth-distilled models) has no column of blanks.
    **({"r teacher": [r["r_teacher"] for r in rows]} if any(r["r_teacher"] is not None for r in rows) else {}),
    "noise ceiling": [r["ceiling"] for r in rows],
    "r / ceiling": [r["normalised"] for r in rows],
}
number = st.column_config.NumberColumn
event = st.dataframe(
    table, key="gallery_table", on_select="rerun", selection_mode="single-row", hide_index=True, width="stretch",
    row_height=64, height=min(38 + 64 * len(rows), 38 + 64 * 10),
    column_config={
        "top image": st.column_config.ImageColumn("top image", help="the held-out image the compact model rates highest"),
        "synthesised": st.column_config.ImageColumn("synthesised", help="the image made to drive the compact model"),
        "parameters": number(format="%d"),
        "consolidated": st.column_config.CheckboxColumn(help="some layer after the first keeps at most 5 filters"),
        "r compact": number(format="%.2f"), "r teacher": number(format="%.2f"),
        "noise ceiling": number(format="%.2f"), "r / ceiling": number(format="%.2f"),
    })
picked = event.selection.rows if event else []
if picked:
    st.session_state["neuron"] = st.session_state["neuron_kept"] = rows[picked[0]]["neuron_id"]
    st.switch_page(PROFILE_PAGE)

if any(r["normalised"] is not None for r in rows):
    st.subheader("Population: accuracy against the noise ceiling")
    scores = {"compact model": [r["normalised"] for r in rows]}
    if any(r["r_teacher"] is not None for r in rows):
        scores["teacher"] = [None if r["r_teacher"] is None or not r["ceiling"] else r["r_teacher"] / r["ceiling"]
                             for r in rows]
    names = [f"{r['neuron_id']} · {r['label']}" if r["label"] else r["neuron_id"] for r in rows]
    show_figure(accuracy_by_neuron_figure({k: [float("nan") if v is None else v for v in vs]
                                               for k, vs in scores.items()}, names, metric="r / noise ceiling"),
                    key="gallery_population", width="stretch")
