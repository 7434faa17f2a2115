{{/* Names. */}}
{{- define "inference-sidecar.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "inference-sidecar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The metrics Service: the suffix fits within a DNS label (63). */}}
{{- define "inference-sidecar.metricsName" -}}
{{- printf "%s-metrics" (include "inference-sidecar.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{- define "inference-sidecar.serviceAccountName" -}}
{{- default (include "inference-sidecar.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "inference-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inference-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{/* The identity labels auditors select by; on the pod and every object of the release. */}}
{{- define "inference-sidecar.identityLabels" -}}
model-name: {{ .Values.identity.modelName | quote }}
model-version: {{ .Values.identity.modelVersion | quote }}
evidence-bundle-id: {{ .Values.identity.evidenceBundleId | quote }}
risk-tier: {{ .Values.identity.riskTier | quote }}
{{- end -}}

{{- define "inference-sidecar.labels" -}}
{{ include "inference-sidecar.selectorLabels" . }}
{{ include "inference-sidecar.identityLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: inference-sidecar
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* An image reference: repository[:tag][@digest]; fails without a digest if required. */}}
{{- define "inference-sidecar.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- $what := index . 2 -}}
{{- if and $root.Values.images.requireDigest (not $image.digest) -}}
{{- fail (printf "%s.image.digest is required (sha256:...): only images pinned by digest run; set images.requireDigest=false for development only" $what) -}}
{{- end -}}
{{- $ref := $image.repository -}}
{{- if $image.tag -}}{{- $ref = printf "%s:%s" $ref $image.tag -}}{{- end -}}
{{- if $image.digest -}}{{- $ref = printf "%s@%s" $ref $image.digest -}}{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* Mount points inside the sidecar container. */}}
{{- define "inference-sidecar.paths" -}}
config: /etc/inference-sidecar/config
profiles: /etc/inference-sidecar/privacy-profiles
detectors: /etc/inference-sidecar/detectors
kafkaTls: /etc/inference-sidecar/kafka-tls
kafkaSasl: /etc/inference-sidecar/kafka-sasl
clientIdKey: /etc/inference-sidecar/client-id
privacyHashKey: /etc/inference-sidecar/privacy-hash-key
data: /var/lib/inference-sidecar
{{- end -}}

{{/* The privacy profile setting: a custom one by its mounted path, else the shipped name. */}}
{{- define "inference-sidecar.profileRef" -}}
{{- $name := index . 0 -}}
{{- $root := index . 1 -}}
{{- $paths := include "inference-sidecar.paths" $root | fromYaml -}}
{{- if hasKey $root.Values.privacyProfiles.custom $name -}}
{{- printf "%s/%s" $paths.profiles $name -}}
{{- else -}}
{{- $name -}}
{{- end -}}
{{- end -}}

{{/* The sidecar's configuration file (every non-secret setting; secrets are file paths). */}}
{{- define "inference-sidecar.config" -}}
{{- $v := .Values -}}
{{- $s := $v.sidecar -}}
{{- /* One network namespace: two listeners on one port would fail to bind at start-up. */ -}}
{{- if or (eq (int $v.model.port) (int $s.port)) (eq (int $v.model.port) (int $s.adminPort)) (eq (int $s.port) (int $s.adminPort)) -}}
{{- fail (printf "model.port (%d), sidecar.port (%d) and sidecar.adminPort (%d) must differ: the pod's containers share one network namespace" (int $v.model.port) (int $s.port) (int $s.adminPort)) -}}
{{- end -}}
{{- $paths := include "inference-sidecar.paths" . | fromYaml -}}
{{- $config := dict
  "model_name" $v.identity.modelName
  "model_version" $v.identity.modelVersion
  "policy_version" $v.identity.policyVersion
  "evidence_bundle_id" $v.identity.evidenceBundleId
  "upstream_url" (printf "http://127.0.0.1:%d" (int $v.model.port))
  "listen" (printf "0.0.0.0:%d" (int $s.port))
  "admin_listen" (printf "0.0.0.0:%d" (int $s.adminPort))
  "wal_dir" (printf "%s/wal" $paths.data)
  "wal_max_bytes" $s.walMaxBytes
  "events_file" (printf "%s/events.jsonl" $paths.data)
  "durability" $s.durability
  "when_full" $s.whenFull
  "drain_timeout" $s.drainTimeout
  "log_level" $s.logLevel
  "privacy_profile" (include "inference-sidecar.profileRef" (list $s.privacyProfile .))
-}}
{{- with $s.upstreamHealthPath -}}{{- $_ := set $config "upstream_health_path" . -}}{{- end -}}
{{- if $s.privacyProfileRoutes -}}
{{- $routes := dict -}}
{{- range $route, $profile := $s.privacyProfileRoutes -}}
{{- $_ := set $routes $route (include "inference-sidecar.profileRef" (list $profile $)) -}}
{{- end -}}
{{- $_ := set $config "privacy_profile_routes" $routes -}}
{{- end -}}
{{- /* Pseudonymous client id and the hash operator's key: paths of mounted secret files. */ -}}
{{- with $s.clientIdSource -}}
{{- $_ := set $config "client_id_source" . -}}
{{- $_ := set $config "client_id_key_file" (printf "%s/%s" $paths.clientIdKey $v.clientIdKey.keyFile) -}}
{{- end -}}
{{- if or $v.privacyHashKey.secretName $v.privacyHashKey.volume -}}
{{- $_ := set $config "privacy_hash_key_file" (printf "%s/%s" $paths.privacyHashKey $v.privacyHashKey.keyFile) -}}
{{- end -}}
{{- with $v.kafka.bootstrap -}}
{{- $k := $v.kafka -}}
{{- $_ := set $config "kafka_bootstrap" . -}}
{{- $_ := set $config "kafka_events_topic" $k.eventsTopic -}}
{{- $_ := set $config "kafka_alerts_topic" $k.alertsTopic -}}
{{- $_ := set $config "kafka_security_protocol" $k.securityProtocol -}}
{{- with $k.client -}}{{- $_ := set $config "kafka_client" . -}}{{- end -}}
{{- if or $k.tls.secretName $k.tls.volume -}}
{{- with $k.tls.caFile -}}{{- $_ := set $config "kafka_ssl_cafile" (printf "%s/%s" $paths.kafkaTls .) -}}{{- end -}}
{{- with $k.tls.certFile -}}{{- $_ := set $config "kafka_ssl_certfile" (printf "%s/%s" $paths.kafkaTls .) -}}{{- end -}}
{{- with $k.tls.keyFile -}}{{- $_ := set $config "kafka_ssl_keyfile" (printf "%s/%s" $paths.kafkaTls .) -}}{{- end -}}
{{- end -}}
{{- with $k.sasl.mechanism -}}
{{- $_ := set $config "kafka_sasl_mechanism" . -}}
{{- $_ := set $config "kafka_sasl_username_file" (printf "%s/%s" $paths.kafkaSasl $k.sasl.usernameFile) -}}
{{- $_ := set $config "kafka_sasl_password_file" (printf "%s/%s" $paths.kafkaSasl $k.sasl.passwordFile) -}}
{{- end -}}
{{- end -}}
{{- $config = merge $config $s.extraConfig -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The restricted Pod Security Standard, for a container; `securityContext` values merge over it. */}}
{{- define "inference-sidecar.containerSecurityContext" -}}
{{- $base := dict
  "runAsNonRoot" true
  "allowPrivilegeEscalation" false
  "readOnlyRootFilesystem" true
  "privileged" false
  "capabilities" (dict "drop" (list "ALL"))
  "seccompProfile" (dict "type" "RuntimeDefault")
-}}
{{- toYaml (mergeOverwrite $base (index . 0)) -}}
{{- end -}}

{{/* A probe of the model container: an httpGet, tcpSocket or grpc on the named port "admin" (the sidecar's,
which the kubelet would look for among the model container's own ports) gets the
number. Arguments: (list probe adminPort). */}}
{{- define "inference-sidecar.adminProbe" -}}
{{- $probe := deepCopy (index . 0) -}}
{{- /* Values merge over the default httpGet: a probe given another handler (exec, say)
       would carry both, which the API server refuses. The other one is the user's. */ -}}
{{- if or (hasKey $probe "exec") (hasKey $probe "tcpSocket") (hasKey $probe "grpc") -}}
{{- $_ := unset $probe "httpGet" -}}
{{- end -}}
{{- range $kind := list "httpGet" "tcpSocket" "grpc" -}}
{{- if and (hasKey $probe $kind) (eq (toString (index (index $probe $kind) "port")) "admin") -}}
{{- $_ := set (index $probe $kind) "port" (index $ 1) -}}
{{- end -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end -}}
