"""What the command line prints: the training summary, an evaluation, predictions. Plain text
for either task (single-label: top-1 and friends; multi-label: mAP and F1 at the thresholds)."""
from __future__ import annotations


def print_summary(summary: dict, run_dir) -> None:
    print()
    if summary.get("task") == "multi-label":
        print(f"{'stage':<14}{'epochs':>7}{'val mAP':>10}{'micro-F1':>10}{'macro-F1':>10}")
        for stage in summary["stages"]:
            print(f"{stage['name']:<14}{stage['epochs']:>7}{stage['val_map']:>10.4f}{stage['val_f1_micro']:>10.4f}"
                  f"{stage['val_f1_macro']:>10.4f}" + ("  (stopped early)" if stage.get("stopped_early") else ""))
        print(f"best val mAP {summary['val_map']:.4f}, micro-F1 {summary['val_f1_micro']:.4f}, macro-F1 "
              f"{summary['val_f1_macro']:.4f} at the thresholds chosen on val (epoch {summary['best_epoch']}), "
              f"{summary['train_seconds']:.1f} s; run folder: {run_dir}")
        return
    print(f"{'stage':<14}{'epochs':>7}{'val top-1':>11}{'val top-5':>11}{'balanced':>10}{'macro-F1':>10}")
    for stage in summary["stages"]:
        print(f"{stage['name']:<14}{stage['epochs']:>7}{stage['val_top1']:>11.4f}{stage['val_top5']:>11.4f}"
              f"{stage['val_balanced_acc']:>10.4f}{stage['val_f1_macro']:>10.4f}"
              + ("  (stopped early)" if stage.get("stopped_early") else ""))
    print(f"best val top-1 {summary['val_top1']:.4f}, balanced accuracy {summary['val_balanced_acc']:.4f}, "
          f"macro-F1 {summary['val_f1_macro']:.4f} (epoch {summary['best_epoch']}), "
          f"{summary['train_seconds']:.1f} s; run folder: {run_dir}")
    if "distillation" in summary:
        d = summary["distillation"]
        print(f"distilled from {d['teacher_model']} ({d['teacher_run']}): teacher val top-1 "
              f"{d['teacher_val_top1']:.4f}; per image {d['teacher_latency_ms']:.2f} ms (teacher) vs "
              f"{d['student_latency_ms']:.2f} ms (student), {d['speedup']:.2f}x")
    if "temperature" in summary:  # calibration_choice.py: chosen on val at the end of training
        threshold = summary.get("min_confidence")
        decision = summary.get("calibration", "fitted")  # a summary from before the decision was recorded
        figures = (f"temperature {summary['temperature']:.3f}, val ECE {summary['val_ece_uncalibrated']:.4f} -> "
                   f"{summary['val_ece']:.4f} out-of-fold" if decision == "fitted"
                   else f"T = 1 kept ({decision}), val ECE {summary['val_ece_uncalibrated']:.4f}")
        print(f"calibration: {figures}"
              + (f"; predict answers 'unknown' below confidence {threshold:.4f}" if threshold is not None else ""))


def print_evaluation(result: dict) -> None:
    names = list(result["per_class"])
    width = max((len(n) for n in names), default=5)
    if result.get("task") == "multi-label":
        print(f"images {result['count']}  mAP {result['map']:.4f}  micro-F1 {result['f1_micro']:.4f}  "
              f"macro-F1 {result['f1_macro']:.4f} (stored thresholds; at 0.5: {result['f1_micro_at_0.5']:.4f}, "
              f"{result['f1_macro_at_0.5']:.4f})  loss {result['loss']:.4f}")
        if "map_tta" in result:
            print(f"with test-time augmentation ({result['tta_views']} views): mAP {result['map_tta']:.4f}  "
                  f"micro-F1 {result['f1_micro_tta']:.4f}")
        print(f"\n  {'class':<{width}}  {'AP':>6}  {'F1':>6}  {'threshold':>9}  support")
        for name, row in result["per_class"].items():
            ap = "     -" if row["ap"] is None else f"{row['ap']:.4f}"
            print(f"  {name:<{width}}  {ap:>6}  {row['f1']:.4f}  {row['threshold']:>9.4f}  {row['support']}")
        return
    print(f"images {result['count']}  top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  "
          f"balanced accuracy {result['balanced_acc']:.4f}  macro-F1 {result['f1_macro']:.4f}  "
          f"loss {result['loss']:.4f}")
    if "ece" in result:
        answered = (f"; {result['answered']:.1%} answered at min confidence {result['min_confidence']:.4f}, "
                    f"top-1 on them {result['answered_top1']:.4f}") if "answered" in result else ""
        print(f"calibration: ECE {result['ece']:.4f} at temperature {result['temperature']:.3f} "
              f"({result['ece_uncalibrated']:.4f} without){answered}")
    if "top1_tta" in result:
        print(f"with test-time augmentation ({result['tta_views']} views): top-1 {result['top1_tta']:.4f}  "
              f"top-5 {result['top5_tta']:.4f}")
    print("\nper-class accuracy")
    for name, accuracy in result["per_class"].items():
        print(f"  {name:<{width}}  {accuracy:.4f}")
    print("\nconfusion matrix (rows: true, columns: predicted)")
    print(" " * (width + 2) + " ".join(f"{i:>5}" for i in range(len(names))))
    for i, (name, row) in enumerate(zip(names, result["confusion"])):
        print(f"  {name:<{width}}" + " ".join(f"{v:>5}" for v in row) + f"   [{i}]")


def print_predictions(predictions, trained) -> None:
    """One line per image: its label(s) and probabilities; then the unreadable files. `trained`:
    the infer.trained.TrainedModel that predicted them (its task decides the columns)."""
    multi_label = trained.task.multi_label
    width = min(max((len(r["path"]) for r in predictions.rows), default=4), 80)
    print(f"{'path':<{width}}  {'labels' if multi_label else 'label':<20} prob")
    for row in predictions.rows:
        if multi_label:  # every label at or above its threshold
            text = trained.label_join.join(row["labels"]) or "(none)"
            print(f"{row['path']:<{width}}  {text:<20} " + " ".join(f"{p:.4f}" for p in row["probs"]))
            continue
        extra = "".join(f"  {l} {p:.4f}" for l, p in zip(row["labels"][1:], row["probs"][1:]))
        guess = f"  (best guess {row['guess']})" if "guess" in row else ""
        print(f"{row['path']:<{width}}  {row['labels'][0]:<20} {row['probs'][0]:.4f}{extra}{guess}")
    if predictions.unreadable:
        print(f"\nunreadable ({len(predictions.unreadable)}):")
        for path, reason in predictions.unreadable:
            print(f"  {path}: {reason}")
