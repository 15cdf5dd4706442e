{{/* Names, labels and the pieces every Mailsluice pod shares. */}}

{{- define "mailsluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailsluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "mailsluice.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "mailsluice.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mailsluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Selector labels of one component: pass (dict "root" $ "component" "ingest"). */}}
{{- define "mailsluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailsluice.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mailsluice.labels" -}}
{{ include "mailsluice.selectorLabels" . }}
app.kubernetes.io/part-of: mailsluice
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* MAILSLUICE_KAFKA_* and MAILSLUICE_LOG_* for any component. */}}
{{- define "mailsluice.commonEnv" -}}
- name: MAILSLUICE_KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
- name: MAILSLUICE_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
- name: MAILSLUICE_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.saslMechanism | quote }}
- name: MAILSLUICE_KAFKA_REPLICATION_FACTOR
  value: {{ .Values.kafka.replicationFactor | quote }}
- name: MAILSLUICE_KAFKA_MIN_INSYNC_REPLICAS
  value: {{ .Values.kafka.minInsyncReplicas | quote }}
{{- if .Values.kafka.tls.caSecret }}
- name: MAILSLUICE_KAFKA_SSL_CAFILE
  value: /etc/mailsluice/kafka-ca/{{ .Values.kafka.tls.caKey }}
{{- end }}
- name: MAILSLUICE_LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
- name: MAILSLUICE_LOG_JSON_FORMAT
  value: {{ .Values.logging.json | quote }}
{{- end -}}

{{- define "mailsluice.envFrom" -}}
{{- if .Values.kafka.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.kafka.credentialsSecret }}
{{- end }}
{{- end -}}

{{/* Volume mounts / volumes every pod has: /tmp, and the Kafka CA when configured. */}}
{{- define "mailsluice.commonMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/mailsluice/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "mailsluice.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
{{- end }}
{{- end -}}

{{- define "mailsluice.podSpecCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* NetworkPolicy pieces: egress to Kafka and DNS; who may scrape metrics. */}}
{{- define "mailsluice.egressKafka" -}}
- ports:
  {{- range .Values.kafka.ports }}
    - port: {{ . }}
      protocol: TCP
  {{- end }}
  {{- with .Values.networkPolicy.kafkaCIDRs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}
{{- define "mailsluice.metricsFrom" -}}
{{- if .Values.networkPolicy.metricsFrom }}
from:
  {{- toYaml .Values.networkPolicy.metricsFrom | nindent 2 }}
{{- else }}
from:
  - namespaceSelector: {}
{{- end }}
{{- end -}}

{{/* One-click unsubscribe: the settings and token keys the unsubscribe service and ingest
share (the keys Secret is mounted as MAILSLUICE_UNSUBSCRIBE_KEYS_DIR). */}}
{{- define "mailsluice.unsubscribeEnv" -}}
{{- $u := .Values.unsubscribe }}
- name: MAILSLUICE_UNSUBSCRIBE_URL
  value: {{ printf "https://%s" $u.host | quote }}
- name: MAILSLUICE_UNSUBSCRIBE_MAILTO_DOMAIN
  value: {{ $u.mailtoDomain | quote }}
- name: MAILSLUICE_UNSUBSCRIBE_SCOPE
  value: {{ $u.scope | quote }}
- name: MAILSLUICE_UNSUBSCRIBE_KEYS_DIR
  value: /etc/mailsluice/unsubscribe-keys
- name: MAILSLUICE_UNSUBSCRIBE_ACTIVE_KEY
  value: {{ $u.keys.activeKey | quote }}
{{- end -}}
{{- define "mailsluice.unsubscribeMount" -}}
- name: unsubscribe-keys
  mountPath: /etc/mailsluice/unsubscribe-keys
  readOnly: true
{{- end -}}
{{- define "mailsluice.unsubscribeVolume" -}}
- name: unsubscribe-keys
  secret:
    secretName: {{ required "unsubscribe.keys.existingSecret is required with unsubscribe.enabled" .Values.unsubscribe.keys.existingSecret }}
{{- end -}}

{{/* Open and click tracking: the settings and token keys of the tracker service (the keys
Secret is mounted as MAILSLUICE_TRACKING_KEYS_DIR). */}}
{{- define "mailsluice.trackingEnv" -}}
{{- $t := .Values.tracking }}
- name: MAILSLUICE_TRACKING_URL
  value: {{ $t.url | quote }}
- name: MAILSLUICE_TRACKING_KEYS_DIR
  value: /etc/mailsluice/tracking-keys
- name: MAILSLUICE_TRACKING_ACTIVE_KEY
  value: {{ $t.keys.activeKey | quote }}
{{- end -}}
{{- define "mailsluice.trackingMount" -}}
- name: tracking-keys
  mountPath: /etc/mailsluice/tracking-keys
  readOnly: true
{{- end -}}
{{- define "mailsluice.trackingVolume" -}}
- name: tracking-keys
  secret:
    secretName: {{ required "tracking.keys.existingSecret is required with tracking.enabled" .Values.tracking.keys.existingSecret }}
{{- end -}}
{{- define "mailsluice.trackingHost" -}}
{{- regexReplaceAll "^https?://([^/:]+).*$" .Values.tracking.url "${1}" -}}
{{- end -}}

{{/* Tenants: the Secret the operator renders from SendingTenants, mounted into the API, the
webhook sender, ingest and the stream processors as MAILSLUICE_TENANTS_FILE. Optional: a pod starts before the operator
has written it (the operator writes it at start in its namespace). */}}
{{- define "mailsluice.tenantsEnv" -}}
- name: MAILSLUICE_TENANTS_FILE
  value: /etc/mailsluice/tenants/tenants.yaml
{{- end -}}
{{- define "mailsluice.tenantsMount" -}}
- name: tenants
  mountPath: /etc/mailsluice/tenants
  readOnly: true
{{- end -}}
{{- define "mailsluice.tenantsVolume" -}}
- name: tenants
  secret:
    secretName: {{ .Values.tenants.secretName }}
    optional: true
{{- end -}}
