"""Fine-tuning with LoRA and BitFit: train, evaluate on test, export a merged model."""
