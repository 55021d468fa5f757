# Every target installs what it needs into .venv first, with the exact versions of constraints.txt (the versions the
# bundles' metadata pins). torch is installed before anything else so that pip never resolves an unpinned torch to a
# multi-GB CUDA build on a CPU machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= $(shell sed -n 's/^torch==//p' constraints.txt)
STAMP := $(VENV)/.installed

.PHONY: install test test-quick lint format demo clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -c constraints.txt -e ".[test,dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m isort --check-only ideal_components tests benchmarks
	$(PY) -m black --check -l 120 --skip-magic-trailing-comma ideal_components tests benchmarks
	$(PY) -m flake8 ideal_components tests benchmarks

format: $(STAMP)
	$(PY) -m isort ideal_components tests benchmarks
	$(PY) -m black -l 120 --skip-magic-trailing-comma ideal_components tests benchmarks

# ---- demo: the real ACDC bundle on synthetic phantoms, with a CPU-sized schedule given as overrides ------------------
DEMO_DIR ?= demo_output
DEMO_PATIENTS ?= 20
DEMO_FRACTION ?= 10
DEMO_PRETRAIN_EPOCHS ?= 10
# 24: 32 (benchmarks/results/demo_seeds_epochs32.md) ran over the 15-minute budget on a slower machine; 24 fits it
# there and its worst seed reaches 0.85, the rule fixed before its runs (benchmarks/results/demo_seeds_epochs24.md)
DEMO_EPOCHS ?= 24
DEMO_SEED ?= 0
DEMO_BUNDLE := bundles/ideal_acdc
DEMO_RUN = $(PY) -m monai.bundle run --meta_file $(DEMO_BUNDLE)/configs/metadata.json \
	--logging_file $(DEMO_BUNDLE)/configs/logging.conf --bundle_root $(DEMO_DIR)/bundle \
	--dataset_dir $(DEMO_DIR)/prepared
# resnet18 on a 2 mm / 128x128 grid and lr 1e-3 so that it fits a 2-core CPU; the bundle defaults are the paper's
# (resnet50, 1.367 mm / 192x192, lr 1e-5)
DEMO_OVERRIDES = --backbone resnet18 --spatial_size "[128,128]" --learning_rate 1e-3 --num_workers 0 --seed $(DEMO_SEED)
# the 10-epoch pseudo-label ramp-up with which the demo was measured (the bundle default is 10 % of max_epochs)
DEMO_TRAIN_OVERRIDES = --dice_weight 1.0 --rampup_epochs 10
# each structure kept as its largest 3D component (off in the bundles; see benchmarks/results/demo_seeds.md)
DEMO_EVAL_OVERRIDES = --keep_largest_component True

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(PY) -m ideal_components synth_acdc $(DEMO_DIR)/raw --patients $(DEMO_PATIENTS) --seed 0
	$(PY) -m ideal_components prepare_acdc $(DEMO_DIR)/raw $(DEMO_DIR)/prepared --pixdim 2.0 --spatial_size 128
	$(DEMO_RUN) --config_file $(DEMO_BUNDLE)/configs/pretrain.json $(DEMO_OVERRIDES) \
		--max_epochs $(DEMO_PRETRAIN_EPOCHS)
	$(DEMO_RUN) --config_file $(DEMO_BUNDLE)/configs/train.json $(DEMO_OVERRIDES) \
		$(DEMO_TRAIN_OVERRIDES) --label_fraction $(DEMO_FRACTION) --max_epochs $(DEMO_EPOCHS) --val_interval 2
	$(DEMO_RUN) --config_file "['$(DEMO_BUNDLE)/configs/train.json','$(DEMO_BUNDLE)/configs/evaluate.json']" \
		$(DEMO_OVERRIDES) $(DEMO_EVAL_OVERRIDES)
	@echo
	@echo "Metrics per volume: $(DEMO_DIR)/bundle/eval/metrics_per_volume.csv"
	@echo "Overlay pictures:   $(DEMO_DIR)/bundle/eval/overlays/"
	@echo "Training curves:    $(DEMO_DIR)/bundle/eval/training_curves.png"
	@echo "TensorBoard:        $(VENV)/bin/tensorboard --logdir $(DEMO_DIR)/bundle/logs"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
