/**
 * The model catalog: public ids clients use, the upstream id each maps to, and prices for cost
 * estimates. /v1/models shows each key only the models it may use.
 */
import type { ModelEntry } from './config.ts';
import { clip, InvalidRequestError, PermissionError } from './errors.ts';
import type { KeyRecord } from './store/types.ts';
import type { TokenUsage } from './usage.ts';

export class ModelCatalog {
  readonly models: readonly ModelEntry[];
  private readonly byId: Map<string, ModelEntry>;

  constructor(models: readonly ModelEntry[]) {
    this.models = models;
    this.byId = new Map(models.map((m) => [m.id, m]));
  }

  get(id: string): ModelEntry | undefined {
    return this.byId.get(id);
  }

  /** The catalog entry for a request's model, checked against the key's model list. */
  resolve(id: string, key: KeyRecord): ModelEntry {
    const model = this.byId.get(id);
    if (!model) {
      throw new InvalidRequestError(
        `model: unknown model "${clip(id)}". Models this gateway serves: ${this.visibleTo(key).map((m) => m.id).join(', ')}.`,
      );
    }
    if (!allows(key, id)) throw new PermissionError(`This key doesn't have access to this model (${id}).`);
    return model;
  }

  visibleTo(key: KeyRecord): ModelEntry[] {
    return this.models.filter((m) => allows(key, m.id));
  }

  /** Estimated cost in US dollars. */
  cost(modelId: string, usage: TokenUsage): number {
    const prices = this.byId.get(modelId)?.prices;
    if (!prices) return 0;
    return (
      (usage.input_tokens * prices.input +
        usage.output_tokens * prices.output +
        usage.cache_creation_input_tokens * prices.cache_write +
        usage.cache_read_input_tokens * prices.cache_read) /
      1_000_000
    );
  }
}

function allows(key: KeyRecord, modelId: string): boolean {
  return key.models === null || key.models.includes(modelId);
}

/** Anthropic's shape for one model object. */
export function modelObject(model: ModelEntry) {
  return { type: 'model' as const, id: model.id, display_name: model.display_name, created_at: model.created_at };
}
