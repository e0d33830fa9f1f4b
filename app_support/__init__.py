"""What every page of the app shares: where runs live, the caches, the sidebar, widgets, background jobs.

`pages/` holds pages only; `app.py` lays them out with `st.navigation` and draws
the sidebar. The library (`compactvision`) never imports streamlit; this
package is the one place where the two meet.

- `locations`: where the project keeps its bundled run, the Train page's runs and the V4 release.
- `jobs`: a command running in a background process, and the progress lines it prints.
- `summary`: the Home page's numbers, read from a run's files.
- `caches`: models and data shared by every browser session, and the locks that guard them.
- `sidebar`: the run and neuron pickers.
- `widgets`: the pieces several pages draw (a per-neuron page's opening, the image picker).
- `entry`: makes a page that Streamlit started on its own run through `app.py` instead.
"""
