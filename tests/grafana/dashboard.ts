/**
 * The types helm/finetune-operator/files/dashboard.json must satisfy, from Grafana's own packages (pinned in
 * package.json): the dashboard, its variables and its rows from @grafana/schema; each panel's options and
 * field config from the panel plugin's schema in @grafana/schema; every query as the Prometheus data source's
 * query (the foundation SDK; @grafana/schema ships no Prometheus query type).
 *
 * The test writes the dashboard as an object literal of type `Board` and runs `tsc --noEmit --strict`, so a
 * misspelt field (excess property), a wrong type or an unknown enum value fails. Panels are told apart by
 * `type`; a panel type missing from `VisualizationPanel` fails until its plugin's types are added here.
 */
import type { Dashboard, FieldConfig, FieldConfigSource, Panel, RowPanel } from '@grafana/schema';
import type * as bargauge from '@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as timeseries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type * as prometheus from '@grafana/grafana-foundation-sdk/prometheus';

/** A type as JSON spells it: a string enum becomes the union of its values; methods are dropped. */
export type Json<T> = T extends (...args: never[]) => unknown
  ? never
  : T extends string
    ? `${T}`
    : T extends readonly (infer U)[]
      ? Json<U>[]
      : T extends object
        ? { [K in keyof T as T[K] extends (...args: never[]) => unknown ? never : K]: Json<T[K]> }
        : T;

/** A Prometheus query as a panel stores it; refId is required. */
export type PromQuery = Json<Omit<prometheus.Dataquery, '_implementsDataqueryVariant'>> & { refId: string };

/** A panel of one plugin: its options (Grafana fills those left out from the plugin's defaults) and custom
 * field config closed to the plugin's schema, and Prometheus queries. */
type Visualization<Type extends string, Options, Custom> = Json<
  Omit<Panel, 'type' | 'options' | 'fieldConfig' | 'targets'>
> & {
  type: Type;
  options: Json<Partial<Options>>;
  fieldConfig: Json<Omit<FieldConfigSource, 'defaults'>> & {
    defaults: Json<Omit<FieldConfig, 'custom'>> & { custom?: Json<Partial<Custom>> };
  };
  targets: PromQuery[];
};

export type TimeSeriesPanel = Visualization<'timeseries', timeseries.Options, timeseries.FieldConfig>;
export type StatPanel = Visualization<'stat', stat.Options, Record<string, never>>;
export type BarGaugePanel = Visualization<'bargauge', bargauge.Options, Record<string, never>>;
export type VisualizationPanel = TimeSeriesPanel | StatPanel | BarGaugePanel;
/** A row; a collapsed row holds its panels, checked like the others. */
export type Row = Json<Omit<RowPanel, 'panels'>> & { panels: VisualizationPanel[] };
export type AnyPanel = Row | VisualizationPanel;

export type Board = Json<Omit<Dashboard, 'panels'>> & { panels: AnyPanel[] };
