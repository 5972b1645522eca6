{{- define "finetune-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "finetune-operator.labels" -}}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "finetune-operator.serviceAccountName" -}}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "finetune-operator.trainerServiceAccountName" -}}
{{- default (printf "%s-trainer" (include "finetune-operator.fullname" .)) .Values.trainer.serviceAccount.name -}}
{{- end -}}

{{/* Namespaces that get the trainer ServiceAccount (see values.yaml). */}}
{{- define "finetune-operator.trainerNamespaces" -}}
{{- $namespaces := .Values.trainer.serviceAccount.namespaces | default .Values.watchNamespaces -}}
{{- toJson (uniq $namespaces) -}}
{{- end -}}
