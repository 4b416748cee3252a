"""ptjax's own TFDS builders, one module per kind of data: `text` (documents), `labeled`
(classification examples), `pairs` (text pairs). Each prepares offline into a data_dir; their
source files are read through ptjax.data.files. `ptjax.data.corpora.get_builder` picks one by
config.dataset.name."""
