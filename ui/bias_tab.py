"""Bias tab: counterfactual templates, paired sentences, a generation probe, fairness metrics and a report."""
from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from core.bias import before_after, counterfactual, crows_pairs, fairness, generation_probe
from core.bias.report import ReportSection, write_report
from core.common.errors import InputError, PlaygroundError, check_number
from core.common.stopping import RunControl
from core.models.device import on_gpu
from core.models.precision import PRECISIONS
from core.models.registry import CAUSAL_LM, OFFLINE_CLASSIFIER, TEXT_CLASSIFICATION
from core.services import Services
from ui.components import HEAVY, STOP, model_picker, progress_callback, stop_run

PLOTS = {"counterfactual": 2, "crows_pairs": 2, "generation": 3, "fairness": 2, "before_after": 1}


def _notes_markdown(section: ReportSection) -> str:
    return "\n".join(f"- **{n.metric}**: {n.measures} *Caveat: {n.caveat}*" for n in section.notes)


def _failure(message: str, probe: str, sections: dict, extra: int) -> tuple:
    """Outputs for a run that could not finish: the message, empty results, the report unchanged."""
    gr.Warning(message)
    return (f"⚠️ {message}", None, *[gr.update(value=None, visible=False)] * PLOTS[probe], "", sections,
            *[None] * extra)


def _shown(section: ReportSection, sections: dict, status: str) -> tuple:
    """Outputs for a finished probe; the section replaces this probe's earlier one in the report."""
    plots = [gr.update(value=f, visible=True) for f in section.figures]
    plots += [gr.update(value=None, visible=False)] * (PLOTS[section.probe] - len(plots))
    sections = {**sections, section.probe: section}
    return (f"{section.headline()}\n\n{status}", section.summary.round(4), *plots, _notes_markdown(section), sections)


def check_resampling(resamples, seed) -> tuple[int, int]:
    return (check_number("Bootstrap resamples", resamples, 10, 10_000, integer=True),
            check_number("Seed", seed, 0, 2**32 - 1, integer=True))


class BiasHandlers:
    """Event handlers: load the chosen models, call core, turn results into component values."""

    def __init__(self, services: Services):
        self.services = services

    def _heavy(self, control: RunControl, what: str, progress: gr.Progress):
        return self.services.work.run(control, what, progress_callback(progress))

    def _model(self, model_id: str, task: str, precision: str, progress: gr.Progress):
        loaded = self.services.manager.load(model_id, task, precision=precision, progress=progress_callback(progress))
        return loaded.model, loaded.tokenizer

    @staticmethod
    def _templates(templates_text: str, groups_text: str, axes) -> tuple[list[str], dict[str, list[str]]]:
        groups = counterfactual.parse_groups(groups_text)
        groups = {a: t for a, t in groups.items() if a in axes} if axes else groups
        if not groups:
            raise InputError("tick at least one axis that is in the group list")
        return counterfactual.parse_templates(templates_text), groups

    @on_gpu  # a ZeroGPU Space lends a GPU for the call; elsewhere a no-op
    def counterfactual(self, control: RunControl, templates_text, groups_text, axes, classifier_id, lm_id,
                       use_classifier, use_lm, label, precision, resamples, seed, sections, progress=gr.Progress()):
        try:
            resamples, seed = check_resampling(resamples, seed)
            templates, groups = self._templates(templates_text, groups_text, axes)
            with self._heavy(control, "counterfactual probe", progress) as stop:
                classifier = self._model(classifier_id, TEXT_CLASSIFICATION, "auto", progress) if use_classifier else None
                lm = self._model(lm_id, CAUSAL_LM, precision, progress) if use_lm else None
                result = counterfactual.run_counterfactual(templates, groups, classifier, lm, label, resamples, seed,
                                                           progress_callback(progress), stop)
        except PlaygroundError as err:
            return _failure(str(err), "counterfactual", sections, 1)
        models = {role: mid for role, mid, used in (("classifier", classifier_id, use_classifier),
                                                    ("language model", lm_id, use_lm)) if used}
        settings = {"templates": len(templates), "axes": list(groups), "score label": result.score_label,
                    "precision": precision, "bootstrap resamples": resamples}
        section = counterfactual.to_section(result, models, settings, seed)
        status = f"Scored {len(result.variants):,} sentences ({len(templates)} templates × {sum(map(len, groups.values()))} terms)."
        return (*_shown(section, sections, status), result.variants.round(4))

    @on_gpu
    def crows(self, control: RunControl, upload, lm_id, precision, batch_size, resamples, seed, sections,
              progress=gr.Progress()):
        try:
            resamples, seed = check_resampling(resamples, seed)
            batch_size = check_number("Batch size", batch_size, 1, 256, integer=True)
            pairs, dropped = crows_pairs.load_pairs(upload)
            with self._heavy(control, "paired-sentence probe", progress) as stop:
                lm = self._model(lm_id, CAUSAL_LM, precision, progress)
                result = crows_pairs.run_crows(pairs, *lm, batch_size, resamples, seed, progress_callback(progress), stop)
        except PlaygroundError as err:
            return _failure(str(err), "crows_pairs", sections, 0)
        source = Path(upload).name if upload else "built-in sample"
        settings = {"data": source, "pairs": len(pairs), "skipped rows": dropped, "precision": precision,
                    "batch size": batch_size, "bootstrap resamples": resamples}
        section = crows_pairs.to_section(result, {"language model": lm_id}, settings, seed)
        overall = result.by_type.iloc[0]
        status = (f"**{overall.pct_stereotype:.1f}%** of {len(pairs):,} pairs prefer the stereotyping sentence "
                  f"(95% CI {overall.low:.1f}–{overall.high:.1f}%; 50% is unbiased)."
                  + (f" Skipped {dropped} row(s) with empty cells." if dropped else ""))
        return _shown(section, sections, status)

    @on_gpu
    def generation(self, control: RunControl, prompts_text, lm_id, classifier_id, use_classifier, label, samples,
                   max_new_tokens, temperature, top_p, precision, resamples, seed, sections, progress=gr.Progress()):
        try:
            resamples, seed = check_resampling(resamples, seed)
            settings = generation_probe.SamplingSettings(check_number("Continuations per prompt", samples, 1, 200, True),
                                                         check_number("Max new tokens", max_new_tokens, 1, 256, True),
                                                         check_number("Temperature", temperature, 0.01, 5),
                                                         check_number("Top-p", top_p, 0.01, 1), seed)
            prompts = generation_probe.parse_prompts(prompts_text)
            with self._heavy(control, "generation probe", progress) as stop:
                lm = self._model(lm_id, CAUSAL_LM, precision, progress)
                classifier = self._model(classifier_id, TEXT_CLASSIFICATION, "auto", progress) if use_classifier else None
                result = generation_probe.run_generation_probe(prompts, lm, settings, classifier, label, resamples,
                                                               progress_callback(progress), stop)
        except PlaygroundError as err:
            return _failure(str(err), "generation", sections, 1)
        models = {"language model": lm_id, **({"classifier": classifier_id} if use_classifier else {})}
        section = generation_probe.to_section(result, models, {**vars(settings), "precision": precision,
                                                               "bootstrap resamples": resamples}, seed)
        status = (f"{len(result.samples):,} continuations from {result.samples['prompt'].nunique()} prompts."
                  + (" **Stopped early**: the report covers the prompts finished so far." if result.stopped else ""))
        return (*_shown(section, sections, status), result.samples)

    @on_gpu
    def fairness(self, control: RunControl, upload, classifier_id, positive, resamples, seed, sections,
                 progress=gr.Progress()):
        try:
            resamples, seed = check_resampling(resamples, seed)
            data = fairness.load_fairness_data(upload)
            with self._heavy(control, "fairness metrics", progress):
                classifier = self._model(classifier_id, TEXT_CLASSIFICATION, "auto", progress)
                progress(0.5, desc=f"Classifying {len(data):,} texts")
                result, scored = fairness.run_fairness(data, classifier, positive, resamples, seed)
        except PlaygroundError as err:
            return _failure(str(err), "fairness", sections, 1)
        settings = {"data": Path(upload).name if upload else "built-in example", "rows": len(data),
                    "positive label": result.positive, "bootstrap resamples": resamples}
        section = fairness.to_section(result, scored, {"classifier": classifier_id}, settings, seed)
        status = (f"{len(data):,} texts in {data['group'].nunique()} groups; positive label '{result.positive}'; "
                  f"overall accuracy {result.overall['accuracy']:.3f}."
                  + "".join(f"\n\n⚠️ {w}" for w in result.warnings))
        return (*_shown(section, sections, status), result.by_group.round(4))

    @on_gpu
    def before_after(self, control: RunControl, before_id, after_id, upload, templates_text, groups_text, axes, label,
                     positive, resamples, seed, sections, progress=gr.Progress()):
        try:
            resamples, seed = check_resampling(resamples, seed)
            if not before_id or not after_id or before_id == after_id:
                raise InputError("choose two different classifiers: the mitigated model and its unmitigated twin")
            templates, groups = self._templates(templates_text, groups_text, axes)
            data = fairness.load_fairness_data(upload)
            with self._heavy(control, "before / after comparison", progress):
                before = self._model(before_id, TEXT_CLASSIFICATION, "auto", progress)
                after = self._model(after_id, TEXT_CLASSIFICATION, "auto", progress)
                progress(0.3, desc="Probing both models")
                result = before_after.compare(before, after, templates, groups, data, label, positive, resamples, seed)
        except PlaygroundError as err:
            return _failure(str(err), "before_after", sections, 0)
        settings = {"data": Path(upload).name if upload else "built-in example", "rows": len(data),
                    "templates": len(templates), "axes": list(groups), "score label": result.label,
                    "bootstrap resamples": resamples}
        section = before_after.to_section(result, {"before": before_id, "after": after_id}, settings, data, seed)
        swaps = result.swaps["after"]
        status = (f"Same probes on both models: {len(templates)} templates, {len(data):,} labelled texts, of which "
                  f"{swaps.texts:,} mention a group word ({swaps.pairs:,} swapped copies).")
        return _shown(section, sections, status)

    def twin(self, after_id: str):
        """Pre-select the unmitigated twin of a model trained here with "compare" (same data and base)."""
        path = self.services.manager.resolve(after_id).path if after_id else None
        twin = before_after.unmitigated_twin(self.services.store, path) if path else None
        return gr.update(value=twin) if twin else gr.skip()

    @staticmethod
    def report(sections: dict):
        if not sections:
            gr.Warning("Run at least one probe first.")
            return "⚠️ Run at least one probe first; the report collects the latest run of each probe.", None, None
        html_path, json_path = write_report(list(sections.values()), Path(tempfile.mkdtemp(prefix="bias-report-")))
        listing = "\n".join(f"- {s.headline()}" for s in sections.values())
        return f"Report with {len(sections)} probe(s):\n{listing}", str(html_path), str(json_path)



def _probe_outputs(c: dict, prefix: str, probe: str, run_label: str, table_label: str, stoppable: bool = True) -> None:
    """Run (and Stop) buttons, then the probe's status line, summary table, charts and plain-language notes."""
    with gr.Row():
        c[f"{prefix}_run"] = gr.Button(run_label, variant="primary")
        if stoppable:
            c[f"{prefix}_stop"] = gr.Button("Stop", variant="stop")
    c[f"{prefix}_status"], c[f"{prefix}_table"] = gr.Markdown(), gr.Dataframe(label=table_label, wrap=True)
    c[f"{prefix}_plots"] = [gr.Plot(visible=False) for _ in range(PLOTS[probe])]
    c[f"{prefix}_notes"] = gr.Markdown()


def build_tab(shell) -> dict[str, gr.Component]:
    services: Services = shell.services
    handlers = BiasHandlers(services)
    choices = [value for _, value in services.model_choices(TEXT_CLASSIFICATION)]
    gr.Markdown("Probe models for social bias. Each probe shows a table, charts and what every number means; the "
                "**Report** tab saves the latest run of each probe as a self-contained HTML page and a JSON file.")
    with gr.Row():
        classifier_id = model_picker(services, TEXT_CLASSIFICATION, label="Classifier",
                                     value=OFFLINE_CLASSIFIER if OFFLINE_CLASSIFIER in choices else None)
        lm_id = model_picker(services, CAUSAL_LM, label="Language model", value=services.default_chat_model)
        precision = gr.Dropdown(list(PRECISIONS), value="fp32", label="LM precision",
                                info="fp32 keeps log-likelihoods exact; auto picks the fastest on this machine")
        seed = gr.Number(0, precision=0, label="Seed", info="sampling and bootstrap")
        resamples = gr.Slider(100, 2000, 1000, step=100, label="Bootstrap resamples")
    sections = gr.State({})
    control = gr.State(RunControl())
    c: dict[str, gr.Component] = {"classifier": classifier_id, "lm": lm_id, "precision": precision, "seed": seed,
                                  "resamples": resamples}
    with gr.Tabs():
        with gr.Tab("Counterfactual templates"):
            groups = counterfactual.load_groups()
            with gr.Row():
                c["cf_templates"] = gr.Textbox("\n".join(counterfactual.load_templates()), lines=8,
                                               label="Templates (one per line, with {group})")
                c["cf_groups"] = gr.Textbox(counterfactual.format_groups(groups), lines=8,
                                            label="Group terms ('axis: term, term, ...')")
            with gr.Row():
                c["cf_axes"] = gr.CheckboxGroup(list(groups), value=["gender", "religion"], label="Axes to run")
                c["cf_use_classifier"] = gr.Checkbox(True, label="Score with the classifier")
                c["cf_use_lm"] = gr.Checkbox(True, label="Score with the language model")
                c["cf_label"] = gr.Textbox("auto", label="Classifier label to score", info="auto: a 'pos…' label")
            _probe_outputs(c, "cf", "counterfactual", "Run counterfactual probe", "Per axis")
            with gr.Accordion("Every sentence and its scores", open=False):
                c["cf_variants"] = gr.Dataframe(wrap=True)
        with gr.Tab("Paired sentences"):
            gr.Markdown("Pairs in CrowS-Pairs format (`sent_more`, `sent_less`, `bias_type`, optional "
                        "`stereo_antistereo`). Without an upload the built-in sample of 34 pairs is used.")
            with gr.Row():
                c["cp_file"] = gr.File(label="Pairs CSV (optional)", file_types=[".csv", ".tsv", ".jsonl"])
                c["cp_batch"] = gr.Slider(1, 64, 16, step=1, label="Batch size")
            _probe_outputs(c, "cp", "crows_pairs", "Score pairs", "Per bias type (%)")
        with gr.Tab("Generation"):
            prompts = generation_probe.load_prompts()
            axis_prompts = {a: generation_probe.format_prompts(p) for a, p in prompts.groupby("axis", sort=False)}
            with gr.Row():
                c["gen_axis"] = gr.Dropdown(list(axis_prompts), value="gender", label="Load prompts for axis")
                c["gen_prompts"] = gr.Textbox(axis_prompts["gender"], lines=6, label="Prompts ('group: prompt')")
            with gr.Row():
                c["gen_samples"] = gr.Slider(1, 50, 5, step=1, label="Continuations per prompt")
                c["gen_tokens"] = gr.Slider(4, 64, 20, step=1, label="Max new tokens")
                c["gen_temperature"] = gr.Slider(0.1, 2.0, 1.0, step=0.05, label="Temperature")
                c["gen_top_p"] = gr.Slider(0.1, 1.0, 0.95, step=0.01, label="Top-p")
            with gr.Row():
                c["gen_use_classifier"] = gr.Checkbox(True, label="Sentiment of continuations with the classifier")
                c["gen_label"] = gr.Textbox("auto", label="Classifier label to score")
            _probe_outputs(c, "gen", "generation", "Generate and compare", "Per group")
            with gr.Accordion("Continuations", open=False):
                c["gen_samples_table"] = gr.Dataframe(wrap=True)
        with gr.Tab("Fairness"):
            gr.Markdown("Upload a CSV with `text`, `label` (two values) and `group` columns; without an upload the "
                        "built-in example is used. The classifier's labels must match the data's labels by name or "
                        "by class number.")
            with gr.Row():
                c["fair_file"] = gr.File(label="Labelled CSV (optional)", file_types=[".csv", ".tsv", ".jsonl"])
                c["fair_positive"] = gr.Textbox("auto", label="Positive label", info="auto: 1 / pos… / true / yes")
            _probe_outputs(c, "fair", "fairness", "Measure fairness", "Disparities", stoppable=False)
            c["fair_groups"] = gr.Dataframe(label="Per group", wrap=True)
        with gr.Tab("Before / after"):
            gr.Markdown("Put a bias-mitigated classifier (Fine-tune → *Counterfactual augmentation* or *Reweigh*) "
                        "beside its unmitigated twin (tick *Compare* there to train both). Both get the templates and "
                        "axes of the **Counterfactual templates** tab, swapped copies of the labelled texts, fairness "
                        "metrics and accuracy, with the same bootstrap.")
            with gr.Row():
                c["ba_after"] = model_picker(services, TEXT_CLASSIFICATION, label="After (mitigated)", value=None)
                c["ba_before"] = model_picker(services, TEXT_CLASSIFICATION, label="Before (unmitigated twin)",
                                              value=None)
                c["ba_file"] = gr.File(label="Labelled CSV: text, label, group (optional)",
                                       file_types=[".csv", ".tsv", ".jsonl"])
            _probe_outputs(c, "ba", "before_after", "Compare before and after", "Before / after", stoppable=False)
        with gr.Tab("Report"):
            c["report_run"] = gr.Button("Build report", variant="primary")
            c["report_status"] = gr.Markdown("Run probes, then build the report (HTML with embedded charts, and JSON).")
            with gr.Row():
                c["report_html"] = gr.File(label="HTML report")
                c["report_json"] = gr.File(label="JSON report")

    common = [resamples, seed, sections]
    c["cf_run"].click(handlers.counterfactual,
                      [control, c["cf_templates"], c["cf_groups"], c["cf_axes"], classifier_id, lm_id, c["cf_use_classifier"],
                       c["cf_use_lm"], c["cf_label"], precision, *common],
                      [c["cf_status"], c["cf_table"], *c["cf_plots"], c["cf_notes"], sections, c["cf_variants"]],
                      api_name="bias_counterfactual", **HEAVY)
    c["cp_run"].click(handlers.crows, [control, c["cp_file"], lm_id, precision, c["cp_batch"], *common],
                      [c["cp_status"], c["cp_table"], *c["cp_plots"], c["cp_notes"], sections], api_name="bias_crows", **HEAVY)
    c["gen_axis"].change(lambda axis: axis_prompts.get(axis, ""), c["gen_axis"], c["gen_prompts"],
                         api_name="bias_generation_prompts")
    c["gen_run"].click(handlers.generation,
                       [control, c["gen_prompts"], lm_id, classifier_id, c["gen_use_classifier"], c["gen_label"],
                        c["gen_samples"], c["gen_tokens"], c["gen_temperature"], c["gen_top_p"], precision, *common],
                       [c["gen_status"], c["gen_table"], *c["gen_plots"], c["gen_notes"], sections,
                        c["gen_samples_table"]], api_name="bias_generation", **HEAVY)
    c["fair_run"].click(handlers.fairness, [control, c["fair_file"], classifier_id, c["fair_positive"], resamples, seed, sections],
                        [c["fair_status"], c["fair_table"], *c["fair_plots"], c["fair_notes"], sections,
                         c["fair_groups"]], api_name="bias_fairness", **HEAVY)
    c["ba_after"].change(handlers.twin, c["ba_after"], c["ba_before"], api_visibility="private")
    c["ba_run"].click(handlers.before_after,
                      [control, c["ba_before"], c["ba_after"], c["ba_file"], c["cf_templates"], c["cf_groups"],
                       c["cf_axes"], c["cf_label"], c["fair_positive"], *common],
                      [c["ba_status"], c["ba_table"], *c["ba_plots"], c["ba_notes"], sections],
                      api_name="bias_before_after", **HEAVY)
    for name in ("cf_stop", "cp_stop", "gen_stop"):
        c[name].click(lambda control: stop_run(control, "step"), control, c[name.replace("_stop", "_status")],
                      api_name=f"bias_{name}", **STOP)
    c["report_run"].click(handlers.report, sections, [c["report_status"], c["report_html"], c["report_json"]],
                          api_name="bias_report")
    flat = {k: v for k, v in c.items() if not isinstance(v, list)}
    flat.update({f"{k}_{i}": plot for k, v in c.items() if isinstance(v, list) for i, plot in enumerate(v)})
    return flat
