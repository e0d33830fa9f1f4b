"""The published compact models of Cowley et al. (2026), read safely and run as ours.

The release stores each neuron's Keras model as a NumPy *object* array of 36
weight arrays, which only a pickle can rebuild. A pickle can call any Python
function, so we never hand these files to `np.load(allow_pickle=True)`:
`unpickle.load_published_arrays` unpickles with a loader that resolves exactly
the globals NumPy needs to rebuild plain arrays and refuses everything else
before it can run.

`convert.published_to_student` maps the Keras layout onto `CompactStudent` (whose
preprocessing, TF-"same" padding and BN epsilon already follow Keras), and
`importing.import_cowley` writes every model into an ordinary run directory,
scored (`scoring`) on the held-out half of its session when the release's images and responses are
beside the weights.

Release layout (see the release README)::

    images/images_<session>.zip                       images_<session>/image0001.jpg ...
    responses_repeat_averaged/responses_<session>.npy  (neurons, images)
    compact_models/weights_npy/compact_model_<session>_neuron<k>.npy
    compact_models/nums_filters/compact_model_<session>_neuron<k>.npy
"""
from compactvision.cowley.convert import (INPUT_SIZE, N_ARRAYS, N_LAYERS, PublishedModel, find_published_models,
                                          load_published_model, published_to_student, read_nums_filters)
from compactvision.cowley.importing import import_cowley
from compactvision.cowley.scoring import (evaluate_published, load_session, release_root_of, score_students,
                                          session_predictions, session_summary, split_halves)
from compactvision.cowley.unpickle import ALLOWED_GLOBALS, load_published_arrays

__all__ = ["ALLOWED_GLOBALS", "INPUT_SIZE", "N_ARRAYS", "N_LAYERS", "PublishedModel", "evaluate_published",
           "find_published_models", "import_cowley", "load_published_arrays", "load_published_model",
           "load_session", "published_to_student", "read_nums_filters", "release_root_of", "score_students",
           "session_predictions", "session_summary", "split_halves"]
