@echo off
rem install.cmd [options...]: install chatrelay.exe (the one next to this
rem script) as the ChatRelay service and start it.  Run as administrator.
rem The options are chatrelay's own (chatrelay.exe --help), for example
rem     install.cmd --listen 0.0.0.0:7777 --retain-days 30
rem and become part of the service command line.  An option value with spaces
rem needs quotes, which sc cannot nest: use "chatrelay.exe install" for those.
rem CHATRELAY_SERVICE_NAME overrides the service name (default ChatRelay).
setlocal EnableExtensions
set "SVC=ChatRelay"
if defined CHATRELAY_SERVICE_NAME set "SVC=%CHATRELAY_SERVICE_NAME%"
set "EXE=%~dp0chatrelay.exe"
set "DATA=%ProgramData%\ChatRelay"

if not exist "%EXE%" (
    echo install.cmd: %EXE% not found: keep this script next to chatrelay.exe
    exit /b 1
)
sc query "%SVC%" >nul 2>&1
if not errorlevel 1 (
    echo install.cmd: service %SVC% already exists: run uninstall.cmd first
    exit /b 1
)

rem The exe path is quoted inside binPath: an unquoted path with spaces would
rem let C:\Program.exe run instead.
sc create "%SVC%" binPath= "\"%EXE%\" %*" start= auto obj= "NT AUTHORITY\LocalService" DisplayName= "ChatRelay chat relay"
if errorlevel 1 (
    echo install.cmd: sc create failed: run this from an elevated prompt ^(Run as administrator^)
    exit /b 1
)
sc description "%SVC%" "ChatRelay: a line-based TCP chat relay with SQLite history. Log: %DATA%\chatrelay.log" >nul
rem Start once the network and disks are up (Windows; Wine's sc has no "config").
sc config "%SVC%" start= delayed-auto >nul 2>&1
rem Restart after 5 s, 30 s, then every 2 min; also when it stops with an error.
sc failure "%SVC%" reset= 86400 actions= restart/5000/restart/30000/restart/120000 >nul
sc failureflag "%SVC%" 1 >nul 2>&1

rem The data folder: LocalService (S-1-5-19) may modify, SYSTEM (S-1-5-18) and
rem Administrators (S-1-5-32-544) have full control, nobody else inherits
rem access to the chat history.  SIDs, not names, so it works in any language.
if not exist "%DATA%\" mkdir "%DATA%"
if not exist "%DATA%\" (
    echo install.cmd: cannot create %DATA%
    goto :undo
)
where icacls >nul 2>&1
if errorlevel 1 (
    echo install.cmd: warning: icacls not found, permissions of %DATA% left as they are
) else (
    icacls "%DATA%" /inheritance:r /grant:r "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-544:(OI)(CI)F" "*S-1-5-19:(OI)(CI)M" >nul
    if errorlevel 1 echo install.cmd: warning: icacls could not set the permissions of %DATA%
)

rem The Event Log source: chatrelay.exe carries its message table.
reg add "HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\%SVC%" /v EventMessageFile /t REG_EXPAND_SZ /d "%EXE%" /f >nul
reg add "HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\%SVC%" /v TypesSupported /t REG_DWORD /d 7 /f >nul

sc start "%SVC%" >nul
if errorlevel 1 (
    echo install.cmd: service %SVC% installed but did not start; see %DATA%\chatrelay.log
    exit /b 1
)
echo install.cmd: service %SVC% installed and started ^(%EXE%^)
exit /b 0

:undo
sc delete "%SVC%" >nul
exit /b 1
