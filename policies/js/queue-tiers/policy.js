// The component's entry point: componentize-js exports `evaluator`.
import { log } from 'scalewise:policy/log@0.1.0';
import { evaluator as makeEvaluator } from './scalewise.js';
import { INFO, decide } from './queue-tiers.js';

export const evaluator = makeEvaluator(INFO, decide, log);
