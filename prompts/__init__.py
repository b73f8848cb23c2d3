"""recaption's prompt data (mask lists, VLM prompt templates), installed as `recaption.prompts`."""
