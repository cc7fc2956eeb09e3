"""PEFT inside distillation: a LoRA student, and a teacher that is a base model plus a LoRA adapter."""

import copy

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from peft import LoraConfig, PeftModel, get_peft_model
from tiny import premasked_dataset, tiny_teacher
from transformers import default_data_collator

from hf_distil import DistillationArguments, DistillationTrainer, create_student


def _args(tmp_path, **kw):
    return DistillationArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=3,
                                 per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True,
                                 learning_rate=1e-2, logging_steps=1, **kw)


def test_lora_student_trains_only_adapters_and_saves_an_adapter_with_its_card(tmp_path):
    teacher = tiny_teacher(dropout=0.0)
    base = create_student(teacher, 2)
    student = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=_args(tmp_path),
                                  train_dataset=premasked_dataset(12), data_collator=default_data_collator)
    trainer.train()
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)
    assert {"kd_loss", "mlm_loss", "hidden_loss"} <= set(trainer.state.log_history[0])
    trainer.save_model()
    trainer.create_model_card()
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert not (out / "model.safetensors").exists()
    card = ModelCard.load(out / "README.md")
    assert "lora" in card.text.lower() and "adapter" in card.text.lower()
    reloaded = PeftModel.from_pretrained(create_student(teacher, 2), out).eval()
    student.eval()
    ids = torch.randint(5, 64, (2, 10))
    assert torch.allclose(reloaded(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-5)


def test_peft_teacher_is_distilled_through_its_adapter(tmp_path):
    base_teacher = tiny_teacher(dropout=0.0)
    student = create_student(base_teacher, 2)
    teacher = get_peft_model(copy.deepcopy(base_teacher), LoraConfig(r=4, lora_alpha=8,
                                                                     target_modules=["query", "value"]))
    with torch.no_grad():  # a trained adapter: make it change the teacher's outputs
        for name, p in teacher.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    a = _args(tmp_path, alpha_mlm=0.0, alpha_hidden=0.0, alpha_kd=1.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=a)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    batch = default_data_collator([premasked_dataset(4)[i] for i in range(4)])
    student.eval()
    loss = trainer.compute_loss(student, batch)
    masked = batch["labels"] != -100
    s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[masked]
    with torch.no_grad():
        t_adapted = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[masked]
        t_base = base_teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[masked]
    expected = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t_adapted / 2, -1), reduction="batchmean") * 4
    base_kl = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t_base / 2, -1), reduction="batchmean") * 4
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert not torch.allclose(loss, base_kl, rtol=1e-3)
